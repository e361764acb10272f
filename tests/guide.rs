//! The guide (`docs/guide/*.md`) quotes the example programs; this keeps the quotes honest.
//!
//! - Every `rust` code block is preceded by `<!-- example: examples/NAME.rs -->` and its text
//!   appears verbatim in that file (at any one indentation: the guide drops the function
//!   body's indent).
//! - Every `sh` block only runs examples that exist (`cargo run --example NAME …`).
//! - No other code blocks, and every example (but the README's quickstart) is quoted somewhere.

use std::collections::BTreeSet;
use std::path::Path;

const MARKER: &str = "<!-- example: ";

/// A fenced block: the fence's info string, its text, the marker line before it (if any), and
/// where it starts.
struct Block {
    info: String,
    text: String,
    marker: Option<String>,
    line: usize,
}

fn blocks(md: &str) -> Vec<Block> {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(info) = lines[i].strip_prefix("```") {
            let marker = i
                .checked_sub(1)
                .and_then(|p| lines[p].strip_prefix(MARKER))
                .and_then(|m| m.strip_suffix(" -->"))
                .map(str::to_string);
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                body.push(lines[i]);
                i += 1;
            }
            out.push(Block {
                info: info.trim().to_string(),
                text: body.join("\n"),
                marker,
                line: start + 1,
            });
        }
        i += 1;
    }
    out
}

/// Whether `block` appears in `source` verbatim once every non-empty line is indented by the
/// same number of spaces.
fn quoted_in(block: &str, source: &str) -> bool {
    (0..=16).any(|n| {
        let pad = " ".repeat(n);
        let indented: Vec<String> = block
            .lines()
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{pad}{l}")
                }
            })
            .collect();
        source.contains(&indented.join("\n"))
    })
}

#[test]
fn guide_code_blocks_are_the_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = root.join("docs/guide");
    let mut pages: Vec<_> = std::fs::read_dir(&guide)
        .expect("docs/guide exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    assert!(
        pages.len() >= 12,
        "expected a page per capability, found {}",
        pages.len()
    );

    let mut problems = Vec::new();
    let mut quoted = BTreeSet::new();
    let mut checked = 0;
    for page in &pages {
        let name = page
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let md = std::fs::read_to_string(page).expect("read a guide page");
        for b in blocks(&md) {
            let at = format!("docs/guide/{name}:{}", b.line);
            match b.info.as_str() {
                "rust" => {
                    let Some(path) = b.marker else {
                        problems.push(format!("{at}: a rust block without `{MARKER}FILE -->`"));
                        continue;
                    };
                    let Ok(source) = std::fs::read_to_string(root.join(&path)) else {
                        problems.push(format!("{at}: quotes {path}, which does not exist"));
                        continue;
                    };
                    if !quoted_in(&b.text, &source) {
                        problems.push(format!("{at}: this block is not in {path} (drift?)"));
                    }
                    quoted.insert(path);
                    checked += 1;
                }
                "sh" => {
                    for l in b.text.lines().filter(|l| !l.trim().is_empty()) {
                        let example = l
                            .strip_prefix("cargo run --example ")
                            .and_then(|r| r.split_whitespace().next());
                        match example {
                            Some(e) if root.join(format!("examples/{e}.rs")).is_file() => {}
                            _ => problems.push(format!("{at}: not a run of an example: {l}")),
                        }
                    }
                }
                other => {
                    problems.push(format!("{at}: a `{other}` block: quote an example instead"))
                }
            }
        }
    }
    for e in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let p = e.expect("entry").path();
        let rel = format!(
            "examples/{}",
            p.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        if rel != "examples/quickstart.rs" && !quoted.contains(&rel) {
            problems.push(format!("{rel} is not quoted by any guide page"));
        }
    }
    println!("{checked} quoted blocks checked in {} pages", pages.len());
    assert!(
        problems.is_empty(),
        "guide problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn drift_is_caught() {
    let source = "fn main() {\n    let a = 1;\n    let b = 2;\n}\n";
    assert!(quoted_in("let a = 1;\nlet b = 2;", source));
    assert!(!quoted_in("let a = 1;\nlet b = 3;", source));
    let md = "<!-- example: examples/x.rs -->\n```rust\nlet a = 1;\n```\n\n```toml\nx = 1\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].marker.as_deref(), Some("examples/x.rs"));
    assert_eq!((b[1].info.as_str(), b[1].marker.is_none()), ("toml", true));
}
