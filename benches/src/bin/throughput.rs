//! `throughput`: one backend, one run, publish / end-to-end / raw / idle-latency figures.
//!
//! ```sh
//! cargo run --release -p courier-benches --bin throughput -- \
//!     --backend memory:// --messages 1000000 --batch 100 --concurrency 1 --json
//! ```

use clap::Parser;
use courier_benches::{Params, run, table};

/// Measure a Courier backend against its raw client in the same run.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Backend URL (memory://, sqlite://…, redis://…, amqp://…, nats://… or tls://…).
    #[arg(long, default_value = "memory://")]
    backend: String,
    /// Messages per phase.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Messages per publish batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Publishers, and handlers running at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Messages the worker leases ahead of free handler slots (default: 4 x batch, at least
    /// the concurrency).
    #[arg(long)]
    prefetch: Option<usize>,
    /// Idle-latency samples.
    #[arg(long, default_value_t = 1_000)]
    latency_samples: usize,
    /// Give every published message a unique deduplication key (the cost of the key check).
    #[arg(long)]
    keys: bool,
    /// Give every published message this time to live in ms (Q12; make it longer than the
    /// run, so nothing expires): the cost of carrying and checking an expiry.
    #[arg(long)]
    ttl_ms: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    if args.messages == 0 || args.batch == 0 || args.concurrency == 0 {
        eprintln!("throughput: --messages, --batch and --concurrency must be at least 1");
        std::process::exit(2);
    }
    let params = Params {
        backend: args.backend,
        messages: args.messages,
        batch: args.batch,
        concurrency: args.concurrency,
        payload: args.payload,
        prefetch: args
            .prefetch
            .unwrap_or((args.batch * 4).max(args.concurrency)),
        latency_samples: args.latency_samples,
        keys: args.keys,
        ttl: args.ttl_ms.map(std::time::Duration::from_millis),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("throughput: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(&params)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("throughput: {e:#}");
                        std::process::exit(1);
                    }
                }
            } else {
                print!("{}", table(&report));
            }
        }
        Err(e) => {
            eprintln!("throughput: {e:#}");
            std::process::exit(1);
        }
    }
}
