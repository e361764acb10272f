//! `meeting-system`: run the services, or play the end-to-end demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meeting_system::config::{Overrides, Settings};
use meeting_system::ledger::Ledger;
use meeting_system::runtime::Platform;
use meeting_system::topology::ServiceKind;

/// The video-meeting platform's services on Courier.
#[derive(Parser, Debug)]
#[command(name = "meeting-system", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Settings that override the configuration file and the environment.
#[derive(Args, Debug)]
struct Global {
    /// Configuration file (default: $MEETING_CONFIG, else ./meeting-system.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Backend URL (memory://, sqlite://file.db, redis://host:6379) or type (memory, redis, …).
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Prefix of every queue, topic and channel (keeps runs on a shared broker apart).
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// Service queue prefix (queues are <queue-name>.<service>).
    #[arg(long, global = true)]
    queue_name: Option<String>,
    /// Task handlers running at once per service.
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// Lease of a received task, ms.
    #[arg(long, global = true)]
    visibility_timeout_ms: Option<u64>,
    /// How long an idle consumer waits per receive, ms.
    #[arg(long, global = true)]
    poll_interval_ms: Option<u64>,
    /// Retries after the first attempt.
    #[arg(long, global = true)]
    max_retries: Option<u32>,
    /// First retry backoff, ms (doubles per attempt).
    #[arg(long, global = true)]
    retry_base_ms: Option<u64>,
    /// Discard tasks that ran out of attempts instead of keeping them as dead letters.
    #[arg(long, global = true)]
    no_dead_letter: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run services until interrupted (Ctrl-C / SIGTERM).
    Run {
        /// Run all five services in this process.
        #[arg(long)]
        all: bool,
        /// The services to run (user, meeting, media, signaling, ai).
        #[arg(value_enum)]
        services: Vec<ServiceKind>,
        /// Also emit every delivery record to the audit topic (for an observer elsewhere).
        #[arg(long)]
        audit: bool,
        /// Stop by itself after this many seconds.
        #[arg(long)]
        exit_after: Option<f64>,
    },
    /// Play the end-to-end scenario on the five services in this process; exit 0 only if
    /// every expected task and event was delivered.
    Demo {
        /// Bound of each phase's wait, seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout_secs: f64,
    },
    /// Print the effective configuration as TOML.
    Config,
}

impl Global {
    fn overrides(&self) -> Overrides {
        Overrides {
            backend: self.backend.clone(),
            namespace: self.namespace.clone(),
            queue_name: self.queue_name.clone(),
            workers: self.workers,
            visibility_timeout_ms: self.visibility_timeout_ms,
            poll_interval_ms: self.poll_interval_ms,
            max_retries: self.max_retries,
            retry_base_ms: self.retry_base_ms,
            dead_letter: self.no_dead_letter.then_some(false),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.global.config.as_deref(), &cli.global.overrides()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meeting-system: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config => match toml::to_string_pretty(&settings) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("meeting-system: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ if !settings.message_queue.enabled => {
            eprintln!(
                "meeting-system: message_queue.enabled is false; the services only talk through \
                 the message queue, so there is nothing to run (set it to true or MEETING_ENABLED=1)"
            );
            ExitCode::from(2)
        }
        Command::Demo { timeout_secs } => {
            let timeout = Duration::from_secs_f64(timeout_secs.max(0.1));
            match meeting_system::scenario::run_demo(&settings, timeout).await {
                Ok(report) => {
                    print!("{}", report.text);
                    if report.passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("meeting-system demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            all,
            services,
            audit,
            exit_after,
        } => run(&settings, all, services, audit, exit_after).await,
    }
}

async fn run(
    settings: &Settings,
    all: bool,
    mut services: Vec<ServiceKind>,
    audit: bool,
    exit_after: Option<f64>,
) -> ExitCode {
    if all {
        services = ServiceKind::ALL.to_vec();
    }
    services.sort();
    services.dedup();
    if services.is_empty() {
        eprintln!(
            "meeting-system run: name services (user, meeting, media, signaling, ai) or --all"
        );
        return ExitCode::from(2);
    }
    let url = match settings.backend_url() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("meeting-system: {e:#}");
            return ExitCode::from(2);
        }
    };
    if !meeting_system::config::is_shared(&url) && services.len() < ServiceKind::ALL.len() {
        eprintln!(
            "meeting-system: WARNING: {url} lives inside this process; services in other \
             processes cannot reach it. Use `run --all`, or a shared backend (--backend)."
        );
    }
    let ledger = Ledger::printing();
    let platform = match Platform::connect(settings, ledger.clone()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "meeting-system: cannot start on {}: {e}",
                courier::redact_url(&url)
            );
            return ExitCode::FAILURE;
        }
    };
    if audit {
        ledger.audit_to(platform.courier().clone(), platform.names().audit_topic());
    }
    let running = match platform.start_all(&services).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meeting-system: cannot start services: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for r in &running {
        let s = r.service();
        println!(
            "meeting-system: {s} on {} ({}): queue {}, group {} on {} topic(s)",
            platform.courier().backend_name(),
            courier::redact_url(&url),
            platform.names().queue(s),
            s.name(),
            s.subscribes().len()
        );
        println!("READY {s}");
    }
    wait_for_stop(exit_after).await;
    println!("meeting-system: stopping");
    for r in running {
        println!("meeting-system: {} state: {}", r.service(), r.summary());
        r.stop(Duration::from_secs(5)).await;
    }
    ExitCode::SUCCESS
}

async fn wait_for_stop(exit_after: Option<f64>) {
    let timer = async {
        match exit_after {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
            None => std::future::pending::<()>().await,
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    _ = timer => {}
                }
            }
            Err(_) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = timer => {}
                }
            }
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = timer => {}
    }
}
