//! `conformance/MUTANTS.md`: one row per mutant of every catalogue. A run rewrites the rows of
//! the mutants it ran and keeps the others as the last run left them, so the report can be
//! brought up to date one backend or one rule area at a time.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::catalogue::{Backend, Mutant};

/// What one mutant did to its backend's suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// These cases failed (backend prefix stripped).
    Caught(Vec<String>),
    /// The suite ran past the harness's limit: a hang is a catch, but a slow one.
    Hung(u64),
    /// Every case passed.
    Survived,
    /// Cases failed once, but none of them failed again when rerun alone: a flaky case, not
    /// a catch. Counted with the survivors.
    Unconfirmed(Vec<String>),
    /// Every case passed and the catalogue says why no behaviour changed.
    Equivalent(String),
    /// The mutant did not compile: a catalogue error, not a result.
    Unbuildable(String),
}

impl Outcome {
    /// The first word of the outcome column, which [`merge`] reads back.
    pub(crate) fn word(&self) -> &'static str {
        match self {
            Outcome::Caught(_) | Outcome::Hung(_) => "caught",
            Outcome::Survived | Outcome::Unconfirmed(_) => "survived",
            Outcome::Equivalent(_) => "equivalent",
            Outcome::Unbuildable(_) => "unbuildable",
        }
    }
}

/// A mutant's row, rendered now.
pub(crate) fn row(m: &Mutant, outcome: &Outcome, commit: &str) -> String {
    let detail = match outcome {
        Outcome::Caught(cases) => {
            let mut cases = cases.clone();
            // The cases of the area the mutant aims at first: they are the intended catch.
            cases.sort_by_key(|c| !c.starts_with(&m.area));
            let shown: Vec<String> = cases.iter().take(4).map(|c| format!("`{c}`")).collect();
            let more = cases.len().saturating_sub(shown.len());
            let mut s = format!(
                "{} case{}: {}",
                cases.len(),
                plural(cases.len()),
                shown.join(", ")
            );
            if more > 0 {
                let _ = write!(s, " and {more} more");
            }
            s
        }
        Outcome::Hung(secs) => format!("the suite did not finish within {secs} s"),
        Outcome::Survived => "**every case passed**".to_string(),
        Outcome::Unconfirmed(cases) => format!(
            "**no failure repeated** when rerun alone (first run: {})",
            cases.join(", ")
        ),
        Outcome::Equivalent(why) => escape(why),
        Outcome::Unbuildable(why) => escape(why),
    };
    format!(
        "| `{}` | {} | `{}` | {} | {} | {} | {} |",
        m.id,
        m.rule,
        m.area,
        outcome.word(),
        detail,
        escape(&m.breaks),
        commit
    )
}

fn not_run(m: &Mutant) -> String {
    format!(
        "| `{}` | {} | `{}` | not run | | {} | |",
        m.id,
        m.rule,
        m.area,
        escape(&m.breaks)
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Table-safe text: one line, no column breaks.
fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The rows of an existing report, by backend then mutant id.
pub(crate) fn parse(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut backend = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("## ") {
            backend = Some(name.trim().to_string());
            continue;
        }
        let (Some(b), Some(rest)) = (&backend, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((id, _)) = rest.split_once('`') {
            out.entry(b.clone())
                .or_default()
                .insert(id.to_string(), line.to_string());
        }
    }
    out
}

/// The (backend, mutant) pairs an existing report shows as caught or equivalent.
pub(crate) fn settled(text: &str) -> std::collections::HashSet<(String, String)> {
    parse(text)
        .into_iter()
        .flat_map(|(b, rows)| {
            rows.into_iter()
                .filter(|(_, row)| matches!(word_of(row), "caught" | "equivalent"))
                .map(move |(id, _)| (b.clone(), id))
        })
        .collect()
}

/// The outcome word of a rendered row.
fn word_of(row: &str) -> &str {
    row.split(" | ").nth(3).unwrap_or("not run").trim()
}

/// The whole report: every catalogue's mutants, with `fresh` rows (this run) replacing the
/// `old` ones.
pub(crate) fn render(
    backends: &[Backend],
    fresh: &HashMap<(String, String), String>,
    old: &HashMap<String, HashMap<String, String>>,
) -> String {
    let mut sections = String::new();
    let mut summary = String::from(
        "| backend | mutants | caught | equivalent | survived | unbuildable | not run |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for b in backends {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let _ = write!(
            sections,
            "\n## {}\n\nMutants of `{}`, judged by its `{}` test{}.\n\n\
             | mutant | rule | aims at | outcome | caught by | what it breaks | commit |\n\
             |---|---|---|---|---|---|---|\n",
            b.name,
            b.package,
            b.tests.join("`, `"),
            plural(b.tests.len())
        );
        for m in &b.mutants {
            let line = fresh
                .get(&(b.name.clone(), m.id.clone()))
                .cloned()
                .or_else(|| old.get(&b.name).and_then(|rows| rows.get(&m.id)).cloned())
                .unwrap_or_else(|| not_run(m));
            let word = match word_of(&line) {
                "caught" => "caught",
                "survived" => "survived",
                "equivalent" => "equivalent",
                "unbuildable" => "unbuildable",
                _ => "not run",
            };
            *counts.entry(word).or_default() += 1;
            sections.push_str(&line);
            sections.push('\n');
        }
        let c = |w| counts.get(w).copied().unwrap_or(0);
        let _ = writeln!(
            summary,
            "| {} | {} | {} | {} | {} | {} | {} |",
            b.name,
            b.mutants.len(),
            c("caught"),
            c("equivalent"),
            c("survived"),
            c("unbuildable"),
            c("not run")
        );
    }
    format!("{HEADER}\n{summary}{sections}")
}

const HEADER: &str = "# Mutation report

Generated by the mutation harness; do not edit by hand. Rerun with `scripts/mutants.sh`
(all backends), `scripts/mutants.sh redis` (one backend), `scripts/mutants.sh --area
queue::lease` (one rule area) or `scripts/mutants.sh --unsettled` (what is not caught yet);
the catalogues are `conformance/mutants/catalogue/<backend>.toml`.

Each row is one semantic mutant: a small, plausible bug written into a backend's source (a Lua
script, an SQL statement, Rust), applied alone. The backend's conformance suite then runs with
every broker required. **caught** lists the cases that failed, those of the rule area the
mutant aims at first; the catch is confirmed by rerunning up to three of them alone with the
mutant still in place and seeing one fail again (a flaky case is not a catch). **survived**
means every case passed with the bug in place: a gap to close with a new conformance case.
**equivalent** is a survivor that changes no observable behaviour, with the reason.
**unbuildable** is a catalogue entry to fix. The commit is the one the row was measured on.
";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn mutant(id: &str) -> Mutant {
        Mutant {
            id: id.into(),
            rule: "Q4".into(),
            area: "queue::lease".into(),
            file: PathBuf::from("x.rs"),
            find: "a".into(),
            replace: "b".into(),
            breaks: "a | b".into(),
            equivalent: None,
        }
    }

    #[test]
    fn rendered_rows_are_read_back_and_kept() {
        let backends = vec![Backend {
            name: "memory".into(),
            package: "courier-memory".into(),
            tests: vec!["conformance".into()],
            mutants: vec![mutant("one"), mutant("two"), mutant("three")],
        }];
        let mut fresh = HashMap::new();
        let caught = Outcome::Caught(vec!["queue::stats::x".into(), "queue::lease::y".into()]);
        fresh.insert(
            ("memory".into(), "one".into()),
            row(&backends[0].mutants[0], &caught, "abc1234"),
        );
        fresh.insert(
            ("memory".into(), "two".into()),
            row(&backends[0].mutants[1], &Outcome::Survived, "abc1234"),
        );
        let first = render(&backends, &fresh, &HashMap::new());
        assert!(
            first.contains("| memory | 3 | 1 | 0 | 1 | 0 | 1 |"),
            "{first}"
        );
        // The area's own case is listed first; pipes in text do not break the table.
        assert!(first.contains("2 cases: `queue::lease::y`, `queue::stats::x`"));
        assert!(first.contains("a \\| b"));

        // A later run of `three` alone keeps the other two rows as they were.
        let mut fresh = HashMap::new();
        fresh.insert(
            ("memory".into(), "three".into()),
            row(&backends[0].mutants[2], &Outcome::Hung(900), "def5678"),
        );
        let second = render(&backends, &fresh, &parse(&first));
        let settled = settled(&first);
        assert!(settled.contains(&("memory".to_string(), "one".to_string())));
        assert!(!settled.contains(&("memory".to_string(), "two".to_string())));
        assert!(
            second.contains("| memory | 3 | 2 | 0 | 1 | 0 | 0 |"),
            "{second}"
        );
        assert!(second.contains("abc1234"));
        assert!(second.contains("did not finish within 900 s"));
    }
}
