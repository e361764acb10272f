//! Fuzzing the URL parsers a user's configuration reaches: `SqliteUrl::parse` (with its
//! parameters and percent-escapes) and `redact_url` (every URL shown in an error or a log).
//! Whatever string arrives, parsing never panics, a refusal is a Courier error of kind
//! `InvalidInput`, and a password in the URL never appears in what is shown.
//!
//! Inputs are built from the grammar's own tokens mixed with random characters, so most of
//! them get past the scheme. `COURIER_FUZZ_CASES` (default 1 000 000) and `COURIER_FUZZ_SEED`
//! extend or replay a run; each run prints its seed.

use courier_core::{ErrorKind, redact_url};
use courier_sqlite::SqliteUrl;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A password no generated URL uses anywhere else.
const SECRET: &str = "s3cr3tPW";

const TOKENS: &[&str] = &[
    "sqlite",
    "SQLite",
    "SQLITE",
    "redis",
    "memory",
    "://",
    ":",
    "//",
    "/",
    "?",
    "&",
    "=",
    "#",
    "%",
    "%2",
    "%20",
    "%2F",
    "%00",
    "%zz",
    "%C3%A9",
    "mode",
    "ro",
    "rw",
    "rwc",
    "busy_timeout",
    "foreign",
    "allow",
    "deny",
    "0",
    "250",
    "99999999999999999999",
    "-1",
    ":memory:",
    "file:",
    "..",
    ".",
    "tmp",
    "x.db",
    "é",
    "\u{0}",
    " ",
    "@",
    "user",
    "[::1]",
    "6379",
    "\\",
];

fn seed() -> u64 {
    std::env::var("COURIER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random)
}

fn cases() -> u64 {
    std::env::var("COURIER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn random_url(rng: &mut SmallRng) -> String {
    let mut s = String::new();
    if rng.random_bool(0.7) {
        s.push_str(
            ["sqlite://", "sqlite:", "SQLite://", "sqlite::memory:", ""][rng.random_range(0..5)],
        );
    }
    if rng.random_bool(0.2) {
        s.push_str(&format!("user:{SECRET}@"));
    }
    for _ in 0..rng.random_range(0..12) {
        if rng.random_bool(0.75) {
            s.push_str(TOKENS[rng.random_range(0..TOKENS.len())]);
        } else {
            s.push(char::from_u32(rng.random_range(0..0x2FF)).unwrap_or('?'));
        }
    }
    s
}

#[test]
fn a_million_urls_never_panic_refuse_as_invalid_input_and_hide_passwords() {
    let seed = seed();
    let total = cases();
    eprintln!("fuzz_url: seed {seed}, {total} inputs (COURIER_FUZZ_SEED to replay)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut parsed, mut refused) = (0u64, 0u64);
    for i in 0..total {
        let url = random_url(&mut rng);
        let outcome = std::panic::catch_unwind(|| SqliteUrl::parse(&url));
        let Ok(result) = outcome else {
            panic!("seed {seed}, input {i} {url:?}: the parser panicked");
        };
        match result {
            Ok(_) => parsed += 1,
            Err(e) => {
                refused += 1;
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "input {url:?}: {e:#}");
                assert!(!e.message().is_empty());
                let shown = format!("{e:#} {e:?}");
                assert!(!shown.contains(SECRET), "input {url:?} leaks: {shown}");
            }
        }
        let Ok(redacted) = std::panic::catch_unwind(|| redact_url(&url)) else {
            panic!("seed {seed}, input {i} {url:?}: redact_url panicked");
        };
        if url.contains("://") && url.contains(&format!("user:{SECRET}@")) {
            assert!(!redacted.contains(SECRET), "{url:?} shown as {redacted:?}");
        }
    }
    eprintln!("fuzz_url: {parsed} parsed, {refused} refused as InvalidInput, 0 panics");
    assert_eq!(parsed + refused, total);
    assert!(
        parsed > 1000 && refused > 1000,
        "the generator should reach both outcomes"
    );
}
