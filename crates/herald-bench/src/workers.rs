//! Worker processes and the coordinator's side of talking to them.
//!
//! One process may hold only about 20,000 open files here, so connections are spread over
//! worker processes (at most [`MAX_PER_WORKER`] each). The coordinator starts each worker by
//! re-executing itself as `herald-bench worker`, writes one [`WorkerSpec`] line to its stdin,
//! then exchanges JSON lines: [`Command`]s in, [`Event`]s out.

use std::net::IpAddr;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::histogram::{Histogram, SparseHistogram};
use crate::target::Target;

/// Connections per worker process, at most (under the ~20,000 open-file limit).
pub const MAX_PER_WORKER: usize = 15_000;

/// Which channels connection `i` subscribes to: `per_connection` of `total` channels named
/// `{prefix}{n}`, spread evenly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelPlan {
    /// Channel name prefix.
    pub prefix: String,
    /// Number of channels (M).
    pub total: usize,
    /// Channels per connection (K ≤ M).
    pub per_connection: usize,
}

impl ChannelPlan {
    /// The channel indexes connection `i` subscribes to (distinct when K ≤ M).
    pub fn indexes(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.per_connection).map(move |k| (i * self.per_connection + k) % self.total)
    }

    /// The name of channel `n`.
    pub fn name(&self, n: usize) -> String {
        format!("{}{n}", self.prefix)
    }

    /// How many of `connections` connections subscribe to channel `n`.
    pub fn subscribers(&self, n: usize, connections: usize) -> usize {
        (0..connections)
            .filter(|i| self.indexes(*i).any(|c| c == n))
            .count()
    }
}

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Worker number (for names and logs).
    pub id: usize,
    /// The server under test.
    pub target: Target,
    /// Connections this worker opens.
    pub connections: usize,
    /// Global index of its first connection (channel assignment and source address).
    pub first_index: usize,
    /// Channel assignment.
    pub channels: ChannelPlan,
    /// Source addresses to spread connections over.
    pub source_ips: Vec<IpAddr>,
    /// Handshakes in flight at once.
    pub max_inflight: usize,
    /// Track the last delivery time of message sequence numbers below this.
    pub track_messages: usize,
    /// Run the churn loop instead of holding connections.
    pub churn: Option<ChurnSpec>,
}

/// The churn loop: connect, subscribe, receive one message, disconnect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    /// Cycles this worker runs.
    pub cycles: usize,
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Payload size of the message each cycle receives.
    pub payload: usize,
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Send a [`Report`] of what was received; with `reset`, start counting afresh.
    Report {
        /// Clear the counters after reporting.
        reset: bool,
    },
    /// Close every connection and exit.
    Exit,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Connection progress.
    Progress {
        /// Connected and subscribed so far.
        connected: usize,
        /// Failed so far.
        failed: usize,
    },
    /// Every connection is up (or failed).
    Ready {
        /// Connected and subscribed.
        connected: usize,
        /// Failed to connect or subscribe.
        failed: usize,
        /// Seconds from the first connect to the last subscription.
        secs: f64,
        /// The first connection failure, if any.
        first_error: Option<String>,
    },
    /// Counters.
    Report(Report),
    /// Churn progress.
    ChurnProgress {
        /// Cycles completed.
        cycles: usize,
    },
    /// A fatal error in the worker.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// What a worker received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Measured deliveries received.
    pub received: u64,
    /// Latency of each delivery, µs.
    pub latency: SparseHistogram,
    /// Per tracked sequence number: the latest receive time (µs since epoch), 0 if none.
    pub last_delivery: Vec<u64>,
    /// Earliest and latest receive times (µs since epoch).
    pub first_receive: u64,
    /// Latest receive time.
    pub last_receive: u64,
    /// Connections open now.
    pub open: usize,
    /// Connections closed by the server.
    pub closed_by_server: usize,
    /// Errors on established connections.
    pub errors: usize,
    /// Churn: cycles completed.
    pub cycles: usize,
    /// Churn: cycles that failed.
    pub failed_cycles: usize,
    /// Churn: seconds the loop ran.
    pub secs: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Bytes the WebSocket connections read from their sockets.
    #[serde(default)]
    pub wire_bytes: u64,
}

/// A running worker, from the coordinator's side.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Start a worker process with `spec`.
    pub async fn spawn(spec: &WorkerSpec) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = serde_json::to_string(spec).expect("spec serialises");
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Send a command.
    pub async fn send(&mut self, command: &Command) -> std::io::Result<()> {
        let mut line = serde_json::to_string(command).expect("command serialises");
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await
    }

    /// The next event; an error if the worker exited or wrote garbage.
    pub async fn next(&mut self) -> std::io::Result<Event> {
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| std::io::Error::other("worker exited"))?;
        serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("bad worker line {line:?}: {e}")))
    }

    /// Ask for a report and wait for it (skipping progress events).
    pub async fn report(&mut self, reset: bool) -> std::io::Result<Report> {
        self.send(&Command::Report { reset }).await?;
        loop {
            match self.next().await? {
                Event::Report(r) => return Ok(r),
                Event::Error { message } => return Err(std::io::Error::other(message)),
                _ => {}
            }
        }
    }

    /// Tell the worker to exit and wait for it.
    pub async fn exit(mut self) {
        let _ = self.send(&Command::Exit).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Merge worker reports.
pub fn merge(reports: &[Report]) -> (Report, Histogram) {
    let mut total = Report::default();
    let mut hist = Histogram::default();
    for r in reports {
        total.received += r.received;
        total.wire_bytes += r.wire_bytes;
        hist.merge(&Histogram::from_sparse(&r.latency));
        if total.last_delivery.len() < r.last_delivery.len() {
            total.last_delivery.resize(r.last_delivery.len(), 0);
        }
        for (a, b) in total.last_delivery.iter_mut().zip(&r.last_delivery) {
            *a = (*a).max(*b);
        }
        if r.first_receive > 0
            && (total.first_receive == 0 || r.first_receive < total.first_receive)
        {
            total.first_receive = r.first_receive;
        }
        total.last_receive = total.last_receive.max(r.last_receive);
        total.open += r.open;
        total.closed_by_server += r.closed_by_server;
        total.errors += r.errors;
        total.cycles += r.cycles;
        total.failed_cycles += r.failed_cycles;
        total.secs = total.secs.max(r.secs);
        if total.first_error.is_none() {
            total.first_error.clone_from(&r.first_error);
        }
    }
    (total, hist)
}

/// Split `total` connections over workers and source addresses.
pub fn plan_workers(
    total: usize,
    workers: Option<usize>,
    source_ips: &[IpAddr],
) -> Vec<(usize, usize, Vec<IpAddr>)> {
    let n = workers
        .unwrap_or_else(|| total.div_ceil(MAX_PER_WORKER))
        .max(1);
    let mut out = Vec::new();
    let mut first = 0;
    for w in 0..n {
        let count = total / n + usize::from(w < total % n);
        out.push((first, count, source_ips.to_vec()));
        first += count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_plan_spreads_evenly() {
        let plan = ChannelPlan {
            prefix: "c".into(),
            total: 10,
            per_connection: 3,
        };
        let subs: Vec<_> = (0..10).map(|n| plan.subscribers(n, 100)).collect();
        assert!(subs.iter().all(|s| *s == 30), "{subs:?}");
        let mine: Vec<_> = plan.indexes(7).collect();
        assert_eq!(mine, vec![1, 2, 3]);
        let split = plan_workers(31_000, None, &[]);
        assert_eq!(split.len(), 3);
        assert_eq!(split.iter().map(|s| s.1).sum::<usize>(), 31_000);
    }
}
