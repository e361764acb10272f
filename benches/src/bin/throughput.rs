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
    /// Install a metrics recorder (the Prometheus exporter's, without its HTTP listener)
    /// before the run: the cost of recording every series Courier emits.
    #[arg(long, conflicts_with = "compare_recorder")]
    recorder: bool,
    /// Run twice in this process: without a metrics recorder, then with one installed; print
    /// both and the ratios (with / without).
    #[arg(long)]
    compare_recorder: bool,
    /// Spread the load over this many queues: one worker per queue (each with --concurrency
    /// handlers), publishers sending batch after batch to the next queue; the raw baseline
    /// uses as many lists. On a Redis Cluster the queues' slots fall on different masters.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Install the Prometheus exporter's recorder (no listener; nothing scrapes it).
fn install_recorder() {
    if let Err(e) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        eprintln!("throughput: cannot install the metrics recorder: {e}");
        std::process::exit(1);
    }
    courier::telemetry::describe();
}

fn print(report: &courier_benches::Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("throughput: {e:#}");
                std::process::exit(1);
            }
        }
    } else {
        print!("{}", table(report));
    }
}

fn main() {
    let args = Args::parse();
    if args.messages == 0 || args.batch == 0 || args.concurrency == 0 || args.queues == 0 {
        eprintln!("throughput: --messages, --batch, --concurrency and --queues must be at least 1");
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
        queues: args.queues,
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
    if args.recorder {
        install_recorder();
    }
    let run_once = || match rt.block_on(run(&params)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("throughput: {e:#}");
            std::process::exit(1);
        }
    };
    let without = run_once();
    if !args.compare_recorder {
        print(&without, args.json);
        return;
    }
    // Handles are registered when a Courier first uses a name, and each run connects afresh,
    // so the second run records into the recorder installed between the two.
    install_recorder();
    let with = run_once();
    if args.json {
        let both = serde_json::json!({
            "without_recorder": without,
            "with_recorder": with,
            "ratio_publish": with.publish_per_s / without.publish_per_s,
            "ratio_e2e": with.e2e_per_s / without.e2e_per_s,
        });
        println!("{both}");
    } else {
        println!("-- without a metrics recorder");
        print!("{}", table(&without));
        println!("-- with the Prometheus recorder installed");
        print!("{}", table(&with));
        println!(
            "with / without     publish {:.3}   end to end {:.3}   (raw baseline {:.3})",
            with.publish_per_s / without.publish_per_s,
            with.e2e_per_s / without.e2e_per_s,
            with.raw_per_s / without.raw_per_s
        );
    }
}
