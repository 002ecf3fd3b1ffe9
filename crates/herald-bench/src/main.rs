//! `herald-bench`: load and latency scenarios against Herald or any Pusher-protocol server,
//! and a `floor` broadcaster for the machine's baseline. See `docs/benchmarking.md`.

#![forbid(unsafe_code)]

mod common;
mod floor;
mod histogram;
mod httpclient;
mod publisher;
mod scenario;
mod target;
mod worker;
mod workers;
mod wsclient;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::target::{Protocol, Transport};

/// Load and latency scenarios for realtime servers.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ramp to N idle subscribed connections: connect rate and server memory per connection.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::idle::IdleArgs,
    },
    /// S subscribers on one channel; P publishes at rate R: delivery latency and time to the
    /// last delivery of each message.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::fanout::FanoutArgs,
    },
    /// N connections on K of M channels; publish rate raised step by step until latency or
    /// loss breaks the bound: the sustained delivery rate.
    Throughput {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::throughput::ThroughputArgs,
    },
    /// Publishes per second through the HTTP API, keep-alive, small fan-out.
    PublishApi {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::publish_api::PublishApiArgs,
    },
    /// Connect, subscribe, receive one message, disconnect, C times: cycles per second and
    /// server memory growth.
    Churn {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::churn::ChurnArgs,
    },
    /// Mixed load for a long time (WebSocket, SSE and long-poll clients coming and going,
    /// some abandoning requests, presence churn, steady publishes): server memory and file
    /// descriptors stay flat, and every count returns to zero when the load stops.
    Soak {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::soak::SoakArgs,
    },
    /// A zero-downtime restart under load: subscribers on history channels, steady
    /// publishes and new connections, the restart command halfway: refused attempts, loss,
    /// duplicates, and delivery latency during the handover against before it.
    Restart {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: scenario::restart::RestartArgs,
    },
    /// Run the floor broadcaster (a bare WebSocket fan-out server) on ADDR.
    Floor {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6401")]
        listen: SocketAddr,
    },
    /// Internal: a worker process (started by the other commands).
    #[command(hide = true)]
    Worker,
}

/// Options every scenario shares: the target, memory source, load spreading and output.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server address (host:port) of the WebSocket and HTTP API listener.
    #[arg(long, default_value = "127.0.0.1:6001")]
    pub addr: SocketAddr,
    /// Client protocol: native (Herald, floor, Node ws baseline) or pusher (Soketi, …).
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    pub protocol: Protocol,
    /// Client transport: ws, or Herald's HTTP fallbacks sse and long-poll (native only).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// App id.
    #[arg(long, default_value = "herald-dev")]
    pub app_id: String,
    /// App key.
    #[arg(long, default_value = "herald-dev-key")]
    pub app_key: String,
    /// App secret.
    #[arg(long, default_value = "herald-dev-secret")]
    pub secret: String,
    /// Server process id, for its memory (from /proc/PID/status).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A status URL whose JSON has memory_rss_bytes (Herald's admin /status), when no pid.
    #[arg(long)]
    pub status_url: Option<String>,
    /// Worker processes (default: enough for 15,000 connections each).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses 127.0.0.1.. to spread connections over (default: one per 20,000).
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, default_value_t = 512)]
    pub inflight: usize,
    /// WebSocket clients offer permessage-deflate (as browsers do); compressed deliveries
    /// are read by inflating their first bytes.
    #[arg(long)]
    pub deflate: bool,
    /// With `--deflate`: read the markers (and latency) of one compressed delivery in N and
    /// only count the others, so that the tool's inflating, on the server's cores, does not
    /// limit what is measured. 1: every delivery.
    #[arg(long, default_value_t = 1)]
    pub inflate_every: u32,
    /// Measured payloads: `pad` (markers padded with `x` to `--payload` bytes), or a
    /// realistic `device` status (~1.5 KB) or `chat` message (~1.3 KB).
    #[arg(long, value_enum, default_value_t = target::PayloadKind::Pad)]
    pub payload_kind: target::PayloadKind,
    /// A label for the report (the server's name).
    #[arg(long, default_value = "target")]
    pub label: String,
    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = |f: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, String>>>,
    >,
               json: bool,
               label: &str| {
        raise_fd_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(
                std::env::var("HERALD_BENCH_THREADS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
            )
            .enable_all()
            .build()
            .expect("runtime");
        match runtime.block_on(f) {
            Ok(result) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
                } else {
                    common::print_table(label, &result);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("herald-bench: {e}");
                ExitCode::FAILURE
            }
        }
    };
    match cli.command {
        Cmd::Idle { common, args } => run(
            Box::pin(scenario::idle::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::Fanout { common, args } => run(
            Box::pin(scenario::fanout::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::Throughput { common, args } => run(
            Box::pin(scenario::throughput::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::PublishApi { common, args } => run(
            Box::pin(scenario::publish_api::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::Churn { common, args } => run(
            Box::pin(scenario::churn::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::Soak { common, args } => run(
            Box::pin(scenario::soak::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::Restart { common, args } => run(
            Box::pin(scenario::restart::run(common.clone(), args)),
            common.json,
            &common.label,
        ),
        Cmd::Floor { listen } => floor::main(listen),
        Cmd::Worker => worker::main(),
    }
}

/// Raise the open-file limit to the hard limit.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}
