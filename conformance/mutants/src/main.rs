//! The mutation harness: proves the conformance suite catches semantic drift on every backend.
//!
//! Each catalogue (`conformance/mutants/catalogue/<backend>.toml`) lists small, plausible bugs
//! in one backend's source. For each selected mutant the harness writes the bug into the tree,
//! builds and runs that backend's conformance suite (every broker required), records which
//! cases failed, and puts the file back, also when interrupted (Ctrl-C, SIGTERM), and at the
//! next start when it was killed outright. The results go to `conformance/MUTANTS.md`.
//!
//! ```text
//! scripts/mutants.sh                      # every backend
//! scripts/mutants.sh redis sqlite         # some backends
//! scripts/mutants.sh --area queue::lease  # one rule area, every backend
//! scripts/mutants.sh --unsettled          # rerun survivors (after closing a gap)
//! scripts/mutants.sh --list               # check the catalogues and list, run nothing
//! ```
//!
//! Before the first mutant of a backend the unmutated suite runs once: a suite that already
//! fails would make every mutant look caught, so the harness stops there instead.

mod catalogue;
mod report;
mod suite;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Parser;

use catalogue::{Backend, Mutant};
use report::Outcome;
use suite::{Cargo, Ended};
use tree::Tree;

/// Apply semantic mutants to backends one at a time and report which conformance cases catch
/// each one.
#[derive(Parser)]
#[command(name = "mutants")]
struct Args {
    /// Backends to mutate (catalogue names: memory, sqlite, redis…); every one when none.
    backends: Vec<String>,
    /// Only mutants aimed at this rule area or a part of it (`queue`, `queue::lease`).
    #[arg(long)]
    area: Option<String>,
    /// Only mutants whose id contains this text (repeatable: any of them).
    #[arg(long)]
    id: Vec<String>,
    /// Only mutants the report does not show as caught or equivalent (survivors, flakes, and
    /// mutants not run yet): the rerun after closing gaps.
    #[arg(long)]
    unsettled: bool,
    /// Check the catalogues and list the selected mutants; build and run nothing.
    #[arg(long)]
    list: bool,
    /// Skip the run of the unmutated suite before a backend's first mutant.
    #[arg(long)]
    no_baseline: bool,
    /// Cargo's target directory for the mutant builds, kept between runs so that each build
    /// is incremental (relative to the repository root).
    #[arg(long, default_value = "target/mutants")]
    target_dir: PathBuf,
    /// The longest one build, or one run of a suite, may take, in seconds.
    #[arg(long, default_value_t = 900)]
    limit: u64,
    /// The report to update (relative to the repository root, or absolute: runs of different
    /// backends in several worktrees may share one report).
    #[arg(long, default_value = "conformance/MUTANTS.md")]
    report: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mutants: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where the workspace is: this crate lives in `conformance/mutants`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: Args) -> Result<ExitCode, String> {
    let root = repo_root()
        .canonicalize()
        .map_err(|e| format!("cannot find the repository root: {e}"))?;
    let target_dir = root.join(&args.target_dir);
    let tree = Tree::new(&root, target_dir.join("journal"));
    match tree.recover() {
        Ok(Some(path)) => eprintln!(
            "mutants: restored {} (an earlier run was killed with it mutated)",
            path.display()
        ),
        Ok(None) => {}
        Err(e) => return Err(format!("cannot restore a file an earlier run mutated: {e}")),
    }

    let all = catalogue::load(&root.join("conformance/mutants/catalogue"), &[])?;
    let chosen = catalogue::load(&root.join("conformance/mutants/catalogue"), &args.backends)?;
    let problems: Vec<String> = chosen
        .iter()
        .flat_map(|b| catalogue::problems(&root, b))
        .collect();
    if !problems.is_empty() {
        return Err(format!(
            "the catalogue does not fit the tree:\n  {}",
            problems.join("\n  ")
        ));
    }
    let report_path = root.join(&args.report);
    let settled = report::settled(&std::fs::read_to_string(&report_path).unwrap_or_default());
    let selected: Vec<(&Backend, Vec<&Mutant>)> = chosen
        .iter()
        .map(|b| {
            let ms = b
                .mutants
                .iter()
                .filter(|m| args.area.as_ref().is_none_or(|a| m.area.starts_with(a)))
                .filter(|m| args.id.is_empty() || args.id.iter().any(|i| m.id.contains(i)))
                .filter(|m| !args.unsettled || !settled.contains(&(b.name.clone(), m.id.clone())))
                .collect();
            (b, ms)
        })
        .collect();
    let total: usize = selected.iter().map(|(_, ms)| ms.len()).sum();
    if args.list {
        for (b, ms) in &selected {
            for m in ms {
                println!("{}/{}  {}  {}  {}", b.name, m.id, m.rule, m.area, m.breaks);
            }
        }
        println!("{total} mutant(s) selected; each applies to the tree");
        return Ok(ExitCode::SUCCESS);
    }
    if total == 0 {
        return Err("no mutant matches the selection".into());
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    let cargo = Cargo {
        root: &root,
        target_dir: &target_dir,
        stop: &stop,
    };
    let limit = Duration::from_secs(args.limit);
    let commit = commit(&root);
    let mut fresh: HashMap<(String, String), String> = HashMap::new();
    let mut tally: HashMap<&'static str, usize> = HashMap::new();
    let mut wrong_marks = Vec::new();
    let started = Instant::now();
    let mut done = 0;

    for (b, ms) in &selected {
        if ms.is_empty() {
            continue;
        }
        if !args.no_baseline {
            eprintln!("mutants: {}: the unmutated suite first", b.name);
            match judge(&cargo, b, None, limit)? {
                Some(Outcome::Survived) => {}
                None => return Ok(interrupted(&tree)),
                Some(other) => {
                    return Err(format!(
                        "{}: the unmutated suite does not pass ({}: {other:?}); every mutant \
                         would look caught. Fix the tree (or the flaky case) first.",
                        b.name,
                        other.word()
                    ));
                }
            }
        }
        for m in ms {
            done += 1;
            eprintln!(
                "mutants: [{done}/{total}] {}/{} ({} {}): {}",
                b.name, m.id, m.rule, m.area, m.breaks
            );
            let t = Instant::now();
            tree.apply(m)
                .map_err(|e| format!("cannot apply {}/{}: {e}", b.name, m.id))?;
            let judged = judge(&cargo, b, Some(m), limit);
            // Put the file back before anything else, whatever the judgement was.
            tree.restore()
                .map_err(|e| format!("cannot restore {}: {e}", m.file.display()))?;
            let Some(mut outcome) = judged? else {
                return Ok(interrupted(&tree));
            };
            match (&outcome, &m.equivalent) {
                (Outcome::Survived, Some(why)) => outcome = Outcome::Equivalent(why.clone()),
                (Outcome::Caught(_) | Outcome::Hung(_), Some(_)) => {
                    wrong_marks.push(format!("{}/{}", b.name, m.id));
                }
                _ => {}
            }
            // With one test target every case carries the same `<backend>::` prefix: drop it.
            if let (Outcome::Caught(cases) | Outcome::Unconfirmed(cases), [_]) =
                (&mut outcome, b.tests.as_slice())
            {
                for c in cases.iter_mut() {
                    if let Some((_, rest)) = c.split_once("::") {
                        *c = rest.to_string();
                    }
                }
            }
            eprintln!(
                "mutants:     {} in {} s{}",
                outcome.word(),
                t.elapsed().as_secs(),
                match &outcome {
                    Outcome::Caught(c) => format!(" by {} case(s), first {}", c.len(), c[0]),
                    Outcome::Unbuildable(why) => format!(":\n{why}"),
                    _ => String::new(),
                }
            );
            *tally.entry(outcome.word()).or_default() += 1;
            fresh.insert(
                (b.name.clone(), m.id.clone()),
                report::row(m, &outcome, &commit),
            );
            // Read the report again before each write: runs on other backends (from other
            // worktrees, `--report` pointing at one file) keep their rows.
            let old = report::parse(&std::fs::read_to_string(&report_path).unwrap_or_default());
            std::fs::write(&report_path, report::render(&all, &fresh, &old))
                .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
        }
    }

    let n = |w| tally.get(w).copied().unwrap_or(0);
    let secs = started.elapsed().as_secs();
    println!(
        "mutants: {total} run on {} in {}m{:02}s: {} caught, {} equivalent, {} survived, {} unbuildable; report {}",
        selected
            .iter()
            .filter(|(_, ms)| !ms.is_empty())
            .map(|(b, _)| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        secs / 60,
        secs % 60,
        n("caught"),
        n("equivalent"),
        n("survived"),
        n("unbuildable"),
        args.report.display()
    );
    if !wrong_marks.is_empty() {
        println!(
            "mutants: marked equivalent but caught (drop the mark): {}",
            wrong_marks.join(", ")
        );
    }
    Ok(
        if n("survived") + n("unbuildable") > 0 || !wrong_marks.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// How many failing cases a catch reruns alone, at most, to confirm it.
const CONFIRM: usize = 3;

/// Build and run `b`'s tests on the tree as it is now, confirming a catch of mutant `m` by
/// rerunning failed cases alone. `None` when interrupted.
fn judge(
    cargo: &Cargo<'_>,
    b: &Backend,
    m: Option<&Mutant>,
    limit: Duration,
) -> Result<Option<Outcome>, String> {
    let io = |e: std::io::Error| format!("cannot run cargo: {e}");
    match cargo.build(&b.package, &b.tests, limit).map_err(io)? {
        Ended::Interrupted => return Ok(None),
        Ended::TimedOut => {
            return Ok(Some(Outcome::Unbuildable(format!(
                "the build took over {} s",
                limit.as_secs()
            ))));
        }
        Ended::Exited { ok: false, output } => {
            return Ok(Some(Outcome::Unbuildable(suite::tail(&output, 15))));
        }
        Ended::Exited { ok: true, .. } => {}
    }
    Ok(Some(
        match cargo.test(&b.package, &b.tests, limit).map_err(io)? {
            Ended::Interrupted => return Ok(None),
            Ended::TimedOut => Outcome::Hung(limit.as_secs()),
            Ended::Exited { ok: true, .. } => Outcome::Survived,
            Ended::Exited { ok: false, output } => {
                let mut cases = suite::failed_cases(&output);
                if cases.is_empty() {
                    // The binary died without naming a case (a crash, an abort): still a
                    // catch, but say so.
                    cases.push(format!(
                        "(the test binary failed without naming a case: {})",
                        suite::tail(&output, 1)
                    ));
                }
                let Some(m) = m else {
                    return Ok(Some(Outcome::Caught(cases)));
                };
                // The cases of the mutant's own area first: the likeliest real catches.
                let mut order: Vec<&String> = cases.iter().collect();
                order.sort_by_key(|c| {
                    !c.split_once("::")
                        .is_some_and(|(_, r)| r.starts_with(&m.area))
                });
                let mut confirmed = false;
                for case in order
                    .into_iter()
                    .filter(|c| !c.starts_with('('))
                    .take(CONFIRM)
                {
                    match cargo
                        .test_case(&b.package, &b.tests, case, limit)
                        .map_err(io)?
                    {
                        Ended::Interrupted => return Ok(None),
                        Ended::Exited { ok: true, .. } => {}
                        Ended::Exited { ok: false, .. } | Ended::TimedOut => {
                            confirmed = true;
                            break;
                        }
                    }
                }
                if confirmed || cases.iter().all(|c| c.starts_with('(')) {
                    Outcome::Caught(cases)
                } else {
                    Outcome::Unconfirmed(cases)
                }
            }
        },
    ))
}

fn interrupted(tree: &Tree) -> ExitCode {
    match tree.restore() {
        Ok(()) => eprintln!("mutants: interrupted; the tree is restored"),
        Err(e) => eprintln!("mutants: interrupted, and the tree could not be restored: {e}"),
    }
    ExitCode::from(130)
}

/// The commit the results belong to, `+` when the tree has uncommitted changes.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| {
            s.lines()
                .any(|l| !l.ends_with("MUTANTS.md") && !l.trim().is_empty())
        })
        .unwrap_or(false);
    if dirty { format!("{head}+") } else { head }
}
