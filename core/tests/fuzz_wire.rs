//! Fuzzing the wire decoder (issue: hardening). Whatever bytes a foreign writer, a corrupt
//! store or an attacker puts where a message should be, `wire::decode` returns a Courier error
//! of kind `Decode` and never panics; every valid message round-trips.
//!
//! Two generators: arbitrary bytes (mostly rejected at the first bytes), and valid encodings
//! with a few bytes flipped, inserted, removed or the tail cut (they get past the header and
//! exercise every length field). The million-input runs use a seeded generator (proptest's
//! per-case overhead makes a million cases take minutes in a debug build); each run prints its
//! seed, and `COURIER_FUZZ_SEED` / `COURIER_FUZZ_CASES` replay or extend it. Proptest drives
//! the structured messages and the round-trip property, where shrinking pays.

use bytes::Bytes;
use courier_core::backend::wire;
use courier_core::{ErrorKind, Message, MessageId, Priority};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("COURIER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000)
}

/// Decode, and hold the decoder to its contract.
fn check(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let data = Bytes::from(bytes);
    match wire::decode(&data) {
        Ok(m) => {
            // Whatever decodes re-encodes to a message that decodes to the same thing.
            let again = wire::encode(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = wire::decode(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, m);
        }
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::Decode, "{}", e);
            prop_assert!(!e.message().is_empty());
        }
    }
    Ok(())
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<[u8; 16]>(),
        "[a-z_.]{0,12}",
        vec(any::<u8>(), 0..64),
        0usize..4,
        btree_map("[a-z]{1,6}", ".{0,8}", 0..3),
        (any::<u32>(), proptest::option::of(1u32..10), any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(id, kind, payload, prio, headers, (attempt, max, created), not_before)| {
                let mut m = Message::new(kind, payload)
                    .with_id(MessageId::from_bytes(id))
                    .with_priority(Priority::from_index(prio).unwrap_or_default());
                m.headers = headers;
                m.attempt = attempt;
                m.max_attempts = max;
                m.created_at = created;
                m.not_before = not_before;
                m
            },
        )
}

/// One edit of a byte string: flip, insert, remove or cut at a position.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Cut(usize),
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    let n = bytes.len().max(1);
    match *e {
        Edit::Set(i, b) if !bytes.is_empty() => bytes[i % n] = b,
        Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
        Edit::Remove(i) if !bytes.is_empty() => {
            bytes.remove(i % n);
        }
        Edit::Cut(i) => bytes.truncate(i % (bytes.len() + 1)),
        _ => {}
    }
}

fn seed() -> u64 {
    std::env::var("COURIER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A few hundred valid encodings to mutate, from proptest's message strategy.
fn corpus(rng_seed: u64) -> Vec<Vec<u8>> {
    use proptest::strategy::ValueTree;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&rng_seed.to_le_bytes());
            s
        }),
    );
    let strategy = message();
    (0..300)
        .map(|_| {
            let m = strategy.new_tree(&mut runner).expect("a message").current();
            wire::encode(&m).expect("valid message encodes").to_vec()
        })
        .collect()
}

#[test]
fn a_million_inputs_never_panic_and_fail_as_decode() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let seed = seed();
    let total = u64::from(cases()) * 2;
    eprintln!("fuzz_wire: seed {seed}, {total} inputs (COURIER_FUZZ_SEED to replay)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let corpus = corpus(seed);
    let (mut decoded, mut rejected) = (0u64, 0u64);
    for i in 0..total {
        let bytes = if i % 2 == 0 {
            // Arbitrary bytes, half of them behind a valid magic and version.
            let len = rng.random_range(0..256);
            let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && b.len() >= 2 {
                b[0] = wire::MAGIC;
                b[1] = wire::VERSION;
            }
            b
        } else {
            let mut b = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                let e = match rng.random_range(0..7) {
                    0 => Edit::Insert(rng.random::<u32>() as usize, rng.random()),
                    1 => Edit::Remove(rng.random::<u32>() as usize),
                    2 => Edit::Cut(rng.random::<u32>() as usize),
                    _ => Edit::Set(rng.random::<u32>() as usize, rng.random()),
                };
                apply(&mut b, &e);
            }
            b
        };
        let input = bytes.clone();
        match std::panic::catch_unwind(|| check(bytes)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("seed {seed}, input {i} {input:02x?}: {e}"),
            Err(_) => panic!("seed {seed}, input {i} {input:02x?}: decoder panicked"),
        }
        if wire::decode(&Bytes::from(input)).is_ok() {
            decoded += 1;
        } else {
            rejected += 1;
        }
    }
    eprintln!("fuzz_wire: {decoded} decoded, {rejected} rejected as Decode, 0 panics");
    assert_eq!(decoded + rejected, total);
    assert!(decoded > 0, "the mutations should leave some inputs valid");
}

#[test]
fn valid_messages_round_trip() {
    let mut r = TestRunner::new(Config {
        cases: 2_000,
        failure_persistence: None,
        ..Config::default()
    });
    r.run(&message(), |m| {
        let bytes = wire::encode(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = wire::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, m);
        Ok(())
    })
    .expect("round trip");
}
