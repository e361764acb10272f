//! `meeting-system`: run the services, or play the end-to-end demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meeting_system::config::{Overrides, Settings};
use meeting_system::ledger::Ledger;
use meeting_system::runtime::Platform;
use meeting_system::telemetry;
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
        /// Serve Prometheus metrics over HTTP on this address (IP:PORT or HOST:PORT), path
        /// /metrics. Installed before connecting, so every Courier series is recorded.
        #[arg(long, value_name = "ADDR", value_parser = telemetry::parse_listen)]
        metrics_listen: Option<SocketAddr>,
        /// How often the queue depth and group lag gauges are refreshed, seconds.
        #[arg(long, value_name = "SECS", default_value_t = telemetry::STATS_EVERY.as_secs_f64(),
              requires = "metrics_listen")]
        stats_every: f64,
        #[command(flatten)]
        otlp: Otlp,
    },
    /// Play the end-to-end scenario on the five services in this process; exit 0 only if
    /// every expected task and event was delivered.
    Demo {
        /// Bound of each phase's wait, seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout_secs: f64,
        #[command(flatten)]
        otlp: Otlp,
    },
    /// Print the effective configuration as TOML.
    Config,
}

/// Trace export.
#[derive(Args, Debug)]
struct Otlp {
    /// Export traces over OTLP http/protobuf to this collector (http://HOST:PORT; /v1/traces
    /// is added when the URL has no path). Needs the `otel` feature (on by default).
    #[arg(long, value_name = "URL", hide = cfg!(not(feature = "otel")))]
    otlp_endpoint: Option<String>,
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
        Command::Demo { timeout_secs, otlp } => {
            let tracing =
                match Tracing::start(otlp.otlp_endpoint.as_deref(), "meeting-system", true) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("meeting-system demo: {e}");
                        return ExitCode::from(2);
                    }
                };
            let timeout = Duration::from_secs_f64(timeout_secs.max(0.1));
            let code = match meeting_system::scenario::run_demo(&settings, timeout).await {
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
            };
            tracing.finish().await;
            code
        }
        Command::Run {
            all,
            services,
            audit,
            exit_after,
            metrics_listen,
            stats_every,
            otlp,
        } => {
            let observe = Observe {
                metrics_listen,
                stats_every: Duration::from_secs_f64(stats_every.max(0.05)),
                otlp_endpoint: otlp.otlp_endpoint,
            };
            run(&settings, all, services, audit, exit_after, observe).await
        }
    }
}

/// What `run` exposes besides its work.
struct Observe {
    metrics_listen: Option<SocketAddr>,
    stats_every: Duration,
    otlp_endpoint: Option<String>,
}

/// The process's tracing setup, flushed by [`Tracing::finish`].
struct Tracing {
    #[cfg(feature = "otel")]
    inner: Option<telemetry::trace::Tracing>,
}

impl Tracing {
    /// Install tracing when spans are exported (`otlp`) or collected (the demo's tree).
    fn start(otlp: Option<&str>, service: &str, collect: bool) -> Result<Tracing, String> {
        #[cfg(feature = "otel")]
        {
            if otlp.is_none() && !collect {
                return Ok(Tracing { inner: None });
            }
            let options = telemetry::trace::TraceOptions {
                service_name: service.to_string(),
                otlp_endpoint: otlp.map(str::to_string),
                collect,
            };
            let t = telemetry::trace::init(&options).map_err(|e| e.to_string())?;
            if let Some(url) = otlp {
                println!("meeting-system: traces to {url} over OTLP/HTTP as service {service}");
            }
            Ok(Tracing { inner: Some(t) })
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (service, collect);
            match otlp {
                Some(_) => Err(
                    "--otlp-endpoint needs the `otel` feature, which this build leaves out".into(),
                ),
                None => Ok(Tracing {}),
            }
        }
    }

    /// Export the spans still queued (bounded) before the process exits.
    async fn finish(self) {
        #[cfg(feature = "otel")]
        if let Some(t) = self.inner.filter(telemetry::trace::Tracing::exporting) {
            match tokio::task::spawn_blocking(move || t.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("meeting-system: WARNING: {e}"),
                Err(e) => eprintln!("meeting-system: WARNING: flushing the spans failed: {e}"),
            }
        }
    }
}

async fn run(
    settings: &Settings,
    all: bool,
    mut services: Vec<ServiceKind>,
    audit: bool,
    exit_after: Option<f64>,
    observe: Observe,
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
    // Courier registers its metric handles at first use: the recorder goes in before connecting.
    if let Some(addr) = observe.metrics_listen {
        if let Err(e) = telemetry::install_metrics(addr) {
            eprintln!("meeting-system: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "meeting-system: metrics on http://{addr}/metrics (queue depth every {} s)",
            observe.stats_every.as_secs_f64()
        );
    }
    let service_name = match services.as_slice() {
        [one] => one.name(),
        _ => "meeting-system",
    };
    let tracing = match Tracing::start(observe.otlp_endpoint.as_deref(), service_name, false) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meeting-system: {e}");
            return ExitCode::from(2);
        }
    };
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
    let poller = observe
        .metrics_listen
        .map(|_| telemetry::spawn_stats_poller(platform.courier().clone(), observe.stats_every));
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
    if let Some(p) = poller {
        p.abort();
    }
    tracing.finish().await;
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
