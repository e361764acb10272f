//! Every public method of the user API carries an example (a code block in its doc comment),
//! and those examples are doctests: `cargo test --doc -p courier-core -p courier` runs them.
//! A method returning a `Result` also documents `# Errors`, an async one `# Cancel safety`.
//!
//! This reads the sources (no rustdoc JSON on stable): for each listed type or trait, every
//! `pub fn` of its inherent `impl` blocks (every `fn` of a trait) must have a ```` ``` ````
//! block in the `///` lines above it. It prints the items lacking something and fails if any.

use std::path::Path;

/// The user API: (file, types and traits whose methods need an example).
const USER_API: &[(&str, &[&str])] = &[
    ("core/src/courier.rs", &["Courier"]),
    ("core/src/dispatcher.rs", &["Dispatcher"]),
    ("core/src/scheduler.rs", &["Scheduler", "ScheduleHandle"]),
    ("core/src/message.rs", &["Message"]),
    ("core/src/policy.rs", &["RetryPolicy", "QueueConfig"]),
    (
        "core/src/worker.rs",
        &["Worker", "WorkerBuilder", "WorkerHandle", "GroupConsumer"],
    ),
    (
        "core/src/subscriber.rs",
        &["Subscriber", "SubscriberHandle"],
    ),
    ("core/src/pubsub.rs", &["PubSub", "Subscription"]),
    ("core/src/queue.rs", &["Queue", "QueueExt"]),
    ("core/src/event_bus.rs", &["EventBus", "EventBusExt"]),
];

/// Free functions of the facade (connecting and config loading), checked in `src/lib.rs`.
const FACADE: &str = "src/lib.rs";

/// The items of `text` lacking an example or a section, as `Type::method (no …)` (`fn name` for
/// free functions when `types` is empty), with the count of items checked.
fn missing(text: &str, types: &[&str]) -> (Vec<String>, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut owner: Option<String> = None;
    let mut out = Vec::new();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        // A top-level item opens a block: remember whose methods follow.
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with("//") {
            owner = block_owner(line);
        }
        let name = if types.is_empty() {
            // Free functions at the top level of the facade.
            public_fn(line, "")
        } else {
            match &owner {
                Some(o) if types.contains(&o.as_str()) => {
                    let trait_block = text.contains(&format!("pub trait {o}"));
                    if trait_block {
                        trait_fn(line)
                    } else {
                        public_fn(line, "    ")
                    }
                }
                _ => None,
            }
        };
        let Some(name) = name else { continue };
        checked += 1;
        let doc = doc_above(&lines, i);
        let signature = signature_at(&lines, i);
        let mut lacks = Vec::new();
        if !doc.contains("```") {
            lacks.push("example");
        }
        let returns = signature.rsplit("->").next().unwrap_or("");
        if signature.contains("->") && returns.contains("Result<") && !doc.contains("# Errors") {
            lacks.push("# Errors");
        }
        if signature.contains("async fn ") && !doc.contains("# Cancel safety") {
            lacks.push("# Cancel safety");
        }
        if !lacks.is_empty() {
            let item = match &owner {
                Some(o) if !types.is_empty() => format!("{o}::{name}"),
                _ => format!("fn {name}"),
            };
            out.push(format!("{item} (no {})", lacks.join(", no ")));
        }
    }
    (out, checked)
}

/// `impl X {` / `impl<..> X {` (inherent, not `impl T for X`) or `pub trait X` → `X`.
fn block_owner(line: &str) -> Option<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(rest) = line.strip_prefix("pub trait ") {
        return Some(ident(rest));
    }
    let rest = line.strip_prefix("impl")?;
    if line.contains(" for ") {
        return None;
    }
    let rest = if rest.starts_with('<') {
        // Skip the generics: `impl<T: X> Name {`.
        let mut depth = 0;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '<' => depth += 1,
                '>' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        &rest[end..]
    } else {
        rest
    };
    Some(ident(rest.trim_start()))
}

/// The name of a `pub fn` (also `pub async fn`, `pub const fn`) starting at `indent`.
fn public_fn(line: &str, indent: &str) -> Option<String> {
    let rest = line.strip_prefix(indent)?;
    if rest.starts_with(' ') {
        return None;
    }
    let rest = rest.strip_prefix("pub ")?;
    let rest = rest
        .strip_prefix("async ")
        .or_else(|| rest.strip_prefix("const "))
        .unwrap_or(rest);
    fn_name(rest)
}

/// The name of a trait method (`fn` or `async fn`, indented by four spaces).
fn trait_fn(line: &str) -> Option<String> {
    let rest = line.strip_prefix("    ")?;
    if rest.starts_with(' ') {
        return None;
    }
    fn_name(rest.strip_prefix("async ").unwrap_or(rest))
}

fn fn_name(rest: &str) -> Option<String> {
    let rest = rest.strip_prefix("fn ")?;
    Some(
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect(),
    )
}

/// The `///` lines right above line `i` (attributes skipped), joined.
fn doc_above(lines: &[&str], i: usize) -> String {
    let mut doc = Vec::new();
    let mut j = i;
    while j > 0 {
        j -= 1;
        let t = lines[j].trim_start();
        if t.starts_with("#[") {
            continue;
        }
        let Some(text) = t.strip_prefix("///") else {
            break;
        };
        doc.push(text.trim_start());
    }
    doc.reverse();
    doc.join("\n")
}

/// The item's signature: from line `i` to the line that opens its body or ends it.
fn signature_at(lines: &[&str], i: usize) -> String {
    let mut sig = String::new();
    for l in &lines[i..] {
        sig.push_str(l.trim());
        sig.push(' ');
        let t = l.trim_end();
        if t.ends_with('{') || t.ends_with(';') || t.ends_with('}') {
            break;
        }
    }
    sig
}

#[test]
fn every_user_api_method_has_an_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all_missing = Vec::new();
    let mut checked = 0;
    for (file, types) in USER_API {
        let text = std::fs::read_to_string(root.join(file)).expect("read a core source file");
        let (m, n) = missing(&text, types);
        assert!(
            n > 0,
            "{file}: no method of {types:?} found: is the parser out of date?"
        );
        checked += n;
        all_missing.extend(m.into_iter().map(|m| format!("{file}: {m}")));
    }
    let text = std::fs::read_to_string(root.join(FACADE)).expect("read src/lib.rs");
    let (m, n) = missing(&text, &[]);
    checked += n;
    all_missing.extend(m.into_iter().map(|m| format!("{FACADE}: {m}")));
    println!(
        "{checked} public methods checked, {} lacking an example or a section",
        all_missing.len()
    );
    for m in &all_missing {
        println!("  {m}");
    }
    assert!(
        all_missing.is_empty(),
        "{} public methods of the user API lack an example or a section:\n{}",
        all_missing.len(),
        all_missing.join("\n")
    );
}

#[test]
fn the_checker_sees_a_missing_example() {
    let src = "pub struct Courier;\nimpl Courier {\n    /// Has one.\n    ///\n    /// ```\n    /// let x = 1;\n    /// ```\n    pub fn a(&self) {}\n\n    /// Has none.\n    #[must_use]\n    pub async fn b(&self) {}\n    fn private(&self) {}\n    /// ```\n    /// ```\n    pub fn c(&self) -> Result<()> {}\n}\nimpl std::fmt::Debug for Courier {\n    pub fn fmt(&self) {}\n}\n#[async_trait]\npub trait Queue {\n    /// None.\n    async fn publish(&self);\n}\n";
    assert_eq!(
        missing(src, &["Courier", "Queue"]),
        (
            vec![
                "Courier::b (no example, no # Cancel safety)".to_string(),
                "Courier::c (no # Errors)".to_string(),
                "Queue::publish (no example, no # Cancel safety)".to_string(),
            ],
            4
        )
    );
}
