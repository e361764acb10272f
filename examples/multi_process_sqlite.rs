//! Two processes sharing one SQLite file: competing consumers across processes (Q1, Q4).
//!
//! The parent publishes 40 jobs into a SQLite file and starts a copy of this program as a
//! child process on the same file; both run a worker on the queue. Every job is handled
//! exactly once, by one process or the other, and both see the same stats, because the
//! queue lives in the file.
//!
//! Run: `cargo run --example multi_process_sqlite [URL]`. With a `sqlite://FILE` URL it uses
//! that file; with any other URL (the default `memory://` cannot be shared between
//! processes) it uses a fresh temporary SQLite file.

use std::process::Stdio;
use std::time::Duration;

use courier::Message;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(30);
const JOBS: u64 = 40;
const QUEUE: &str = "examples.shared";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let url = args.get(2).ok_or("--child needs a URL")?;
        let handled = work(url, "child").await?;
        println!("{handled}");
        return Ok(());
    }

    let given = args.get(1).cloned().unwrap_or_else(|| "memory://".into());
    let mut temp_dir = None;
    let url = if given.to_ascii_lowercase().starts_with("sqlite://") {
        given
    } else {
        let dir = std::env::temp_dir().join(format!("courier-multi-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        println!("{given} is not shared between processes: using a temporary SQLite file");
        let url = format!("sqlite://{}", dir.join("shared.db").display());
        temp_dir = Some(dir);
        url
    };
    let result = parent(&url).await;
    if let Some(dir) = temp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn parent(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let courier = courier::connect(url).await?;
    println!("parent on {} ({url})", courier.backend_name());
    let jobs = (0..JOBS)
        .map(|i| Message::new("job", format!("{i}")))
        .collect();
    tokio::time::timeout(WAIT, courier.queue().publish_batch(QUEUE, jobs)).await??;

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut child_out = child.stdout.take().ok_or("no child stdout")?;
    let mine = work(url, "parent").await?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    let mut out = String::new();
    child_out.read_to_string(&mut out).await?;
    let theirs: u64 = out.trim().lines().last().unwrap_or("").parse()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }

    let s = tokio::time::timeout(WAIT, courier.queue().stats(QUEUE)).await??;
    println!(
        "handled: parent {mine}, child {theirs}; the shared file says acked={}",
        s.acked
    );
    if mine + theirs != JOBS || s.acked != JOBS || s.retried != 0 {
        return Err("every job must be handled exactly once".into());
    }
    Ok(())
}

/// Run a worker on the shared queue until the file says every job is acked; return how many
/// this process handled.
async fn work(url: &str, who: &'static str) -> Result<u64, Box<dyn std::error::Error>> {
    let courier = courier::connect(url).await?;
    let worker = courier
        .worker(QUEUE)
        .concurrency(2)
        .idle_wait(Duration::from_millis(50))
        .handler("job", move |m: Message| async move {
            // A little work, so both processes get a share.
            tokio::time::sleep(Duration::from_millis(10)).await;
            eprintln!(
                "  {who} handled job {}",
                String::from_utf8_lossy(&m.payload)
            );
            Ok(())
        })
        .start()?;
    tokio::time::timeout(WAIT, async {
        while courier.queue().stats(QUEUE).await.map_or(0, |s| s.acked) < JOBS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let report = worker.stop(Duration::from_secs(5)).await;
    Ok(report.stats.succeeded)
}
