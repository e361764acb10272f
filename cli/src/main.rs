//! The `courier` binary: parse, connect, run, one line per error (see the crate docs).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use courier_cli::{Cli, Command, Done, one_line, resolve_url, run};

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("courier: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(main_async(&cli)) {
        Ok(done) => ExitCode::from(done.code()),
        Err(e) => {
            eprintln!("courier: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

async fn main_async(cli: &Cli) -> courier::Result<Done> {
    let url = resolve_url(cli)?;
    if let Command::Dashboard(args) = &cli.command {
        // Refuse a bad --listen or a missing token before connecting.
        courier_cli::dashboard::preflight(args)?;
    }
    if let Command::Bench {
        messages,
        batch,
        concurrency,
        payload,
    } = &cli.command
    {
        if *messages == 0 || *batch == 0 || *concurrency == 0 {
            return Err(courier::Error::invalid(
                "--messages, --batch and --concurrency must be at least 1",
            ));
        }
        let params = courier_benches::Params {
            backend: url,
            messages: *messages,
            batch: *batch,
            concurrency: *concurrency,
            payload: *payload,
            prefetch: (*batch * 4).max(*concurrency),
            latency_samples: 200,
            keys: false,
            ttl: None,
            queues: 1,
        };
        let report = courier_benches::run(&params).await?;
        if cli.json {
            println!(
                "{}",
                serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
        } else {
            print!("{}", courier_benches::table(&report));
        }
        return Ok(Done::Ok);
    }
    let courier = match tokio::time::timeout(CONNECT_TIMEOUT, courier::connect(&url)).await {
        Ok(c) => c?,
        Err(_) => {
            return Err(courier::Error::new(
                courier::ErrorKind::Unavailable,
                format!(
                    "{} gave no answer within {} s",
                    courier::redact_url(&url),
                    CONNECT_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    let mut out = String::new();
    let done = run(&courier, cli, &mut out).await;
    print!("{out}");
    done
}
