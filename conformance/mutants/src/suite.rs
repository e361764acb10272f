//! Building and running a backend's tests under cargo, bounded in time and interruptible.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How a cargo command ended.
pub(crate) enum Ended {
    /// It exited; `ok` is its success, `output` its stdout then stderr.
    Exited { ok: bool, output: String },
    /// It ran past its time and was killed.
    TimedOut,
    /// The harness was asked to stop (Ctrl-C, SIGTERM) and killed it.
    Interrupted,
}

/// Where and how cargo runs.
pub(crate) struct Cargo<'a> {
    pub(crate) root: &'a Path,
    pub(crate) target_dir: &'a Path,
    pub(crate) stop: &'a AtomicBool,
}

impl Cargo<'_> {
    /// `cargo test -p <package> --test <t>… --no-run`: does the mutant build?
    pub(crate) fn build(
        &self,
        package: &str,
        tests: &[String],
        limit: Duration,
    ) -> io::Result<Ended> {
        self.run(&test_args(package, tests, "--no-run", &[]), limit)
    }

    /// The tests themselves, with every broker required: an unreachable one fails rather
    /// than skips, so a mutant is never "survived" by a suite that did not run.
    pub(crate) fn test(
        &self,
        package: &str,
        tests: &[String],
        limit: Duration,
    ) -> io::Result<Ended> {
        self.run(&test_args(package, tests, "--no-fail-fast", &[]), limit)
    }

    /// One case alone (`--exact`), to confirm a failure is the mutant's and not a flake.
    pub(crate) fn test_case(
        &self,
        package: &str,
        tests: &[String],
        case: &str,
        limit: Duration,
    ) -> io::Result<Ended> {
        let exact = ["--", "--exact", case];
        self.run(&test_args(package, tests, "--no-fail-fast", &exact), limit)
    }

    fn run(&self, args: &[&str], limit: Duration) -> io::Result<Ended> {
        let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(args)
            .current_dir(self.root)
            .env("CARGO_TARGET_DIR", self.target_dir)
            .env("COURIER_REQUIRE_BACKENDS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches only the harness, which then
            // kills cargo and the test binary together and restores the tree.
            .process_group(0)
            .spawn()?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if self.stop.load(Ordering::Relaxed) {
                kill_group(&mut child);
                return Ok(Ended::Interrupted);
            }
            if started.elapsed() > limit {
                kill_group(&mut child);
                break None;
            }
            thread::sleep(Duration::from_millis(100));
        };
        let mut output = out.join().unwrap_or_default();
        output.push_str(&err.join().unwrap_or_default());
        Ok(match status {
            Some(s) => Ended::Exited {
                ok: s.success(),
                output,
            },
            None => Ended::TimedOut,
        })
    }
}

/// `cargo test -p <package> <mode> --test <t>… <rest>`.
fn test_args<'a>(
    package: &'a str,
    tests: &'a [String],
    mode: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["test", "-p", package, mode];
    for t in tests {
        args.extend(["--test", t.as_str()]);
    }
    args.extend(rest);
    args
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Kill cargo and everything it started (the test binary, rustc): the whole process group.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// The cases libtest reported as failed (`test <name> ... FAILED`), in output order.
pub(crate) fn failed_cases(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, verdict) = rest.split_once(" ... ")?;
            (verdict.trim() == "FAILED").then(|| name.trim().to_string())
        })
        .collect()
}

/// The last `n` lines of `output`, for a message about a failed build.
pub(crate) fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_cases_reads_libtest_lines() {
        let out = "running 3 tests\n\
                   test redis::queue::lease::a                 ... ok\n\
                   test redis::queue::lease::b                 ... FAILED\n\
                   test redis::queue::stats::c ... FAILED\n\
                   failures:\n    redis::queue::lease::b\n";
        assert_eq!(
            failed_cases(out),
            vec!["redis::queue::lease::b", "redis::queue::stats::c"]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
