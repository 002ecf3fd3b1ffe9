//! [`Metrics`]: the node's counters, gauges and latency histogram.
//!
//! There is no global registry: one `Metrics` is created with the node and passed down to
//! every part that records something. Everything is a relaxed atomic, so recording never
//! takes a lock; the hot path records once per socket write batch, not once per message.
//! [`Metrics::render_prometheus`] writes the Prometheus text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the publish-to-socket-write latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A fixed-bucket histogram of durations, in the Prometheus cumulative form when rendered.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket (non-cumulative); the last slot is the +Inf overflow.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations, in microseconds.
    sum_micros: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

impl Histogram {
    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let mut local = LocalHistogram::default();
        local.observe(d);
        self.merge(&local);
    }

    /// Add a batch recorded locally: a few atomic adds however many observations it holds.
    pub fn merge(&self, local: &LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (i, n) in local.buckets.iter().enumerate() {
            if *n > 0 {
                self.buckets[i].fetch_add(u64::from(*n), Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(local.sum_micros, Ordering::Relaxed);
        self.count
            .fetch_add(u64::from(local.count), Ordering::Relaxed);
    }

    /// The number of observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The cumulative count at each bucket's upper bound (`None`: +Inf), the sum in
    /// seconds and the count: the histogram as Prometheus exposes it.
    pub fn snapshot(&self) -> (Vec<(Option<f64>, u64)>, f64, u64) {
        let mut cumulative = 0u64;
        let mut out = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            out.push((Some(*le), cumulative));
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        out.push((None, cumulative));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (out, sum, self.count.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Observations gathered by one task before merging them into a shared [`Histogram`].
#[derive(Debug, Default, Clone)]
pub struct LocalHistogram {
    buckets: [u32; LATENCY_BUCKETS.len() + 1],
    sum_micros: u64,
    count: u32,
}

impl LocalHistogram {
    /// Record one duration locally.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_micros += d.as_micros() as u64;
        self.count += 1;
    }
}

/// Every metric the node records.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Realtime connections open now (all transports).
    pub connections: AtomicI64,
    /// Realtime connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connection attempts refused (limits, auth, unknown app, origin).
    pub connections_rejected: AtomicU64,
    /// Channel subscriptions held now, summed over connections.
    pub subscriptions: AtomicI64,
    /// Channels with at least one local subscriber now.
    pub channels: AtomicI64,
    /// Messages received from clients (any type).
    pub messages_received: AtomicU64,
    /// Publications accepted (API publishes, client events, presence changes), per channel.
    pub messages_published: AtomicU64,
    /// Publishes not delivered because they repeated an idempotency key.
    pub publishes_deduplicated: AtomicU64,
    /// Publications not delivered because their payload equalled the channel's previous one.
    pub publishes_unchanged: AtomicU64,
    /// Subscriptions that asked for recovery and got every missed publication.
    pub recoveries_succeeded: AtomicU64,
    /// Subscriptions that asked for recovery and were told it was not possible.
    pub recoveries_failed: AtomicU64,
    /// Publications replayed from history by recoveries.
    pub recovered_publications: AtomicU64,
    /// Messages written to client sockets (publications, replies, pings).
    pub messages_delivered: AtomicU64,
    /// Socket writes (each carries every message queued for one connection at that moment).
    pub socket_writes: AtomicU64,
    /// Messages dropped because a connection's queue overflowed or it was closing.
    pub messages_dropped: AtomicU64,
    /// Connections closed because they could not keep up.
    pub slow_consumer_disconnects: AtomicU64,
    /// Webhook events waiting to be sent: in the core's queue, being batched, or in an
    /// endpoint's queue (an event for two endpoints counts twice there).
    pub webhooks_queued: AtomicI64,
    /// Connections closed because they stayed silent past the activity timeout.
    pub activity_timeouts: AtomicU64,
    /// Client requests refused with an error message.
    pub client_errors: AtomicU64,
    /// Webhook events dropped because the sender's queue was full.
    pub webhooks_dropped: AtomicU64,
    /// Webhook requests answered with a 2xx.
    pub webhooks_sent: AtomicU64,
    /// Webhook batches given up after retrying for the whole retry window.
    pub webhooks_failed: AtomicU64,
    /// HTTP API requests served.
    pub api_requests: AtomicU64,
    /// HTTP API requests answered with an error status.
    pub api_errors: AtomicU64,
    /// Time from a publication entering this node to its frame being written to a socket.
    pub publish_to_write: Histogram,
}

impl Metrics {
    /// A fresh set of zeroed metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Write every metric in the Prometheus text format; `extra` gauges (name, help, value)
    /// are appended, for values owned elsewhere (uptime, memory).
    pub fn render_prometheus(&self, out: &mut String, extra: &[(&str, &str, f64)]) {
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let load = |g: &AtomicI64| g.load(Ordering::Relaxed);
        gauge(
            out,
            "herald_connections",
            "Realtime connections open now.",
            load(&self.connections),
        );
        gauge(
            out,
            "herald_subscriptions",
            "Channel subscriptions held now.",
            load(&self.subscriptions),
        );
        gauge(
            out,
            "herald_channels",
            "Channels with at least one local subscriber.",
            load(&self.channels),
        );
        counter(
            out,
            "herald_connections_accepted_total",
            "Realtime connections accepted.",
            &self.connections_accepted,
        );
        counter(
            out,
            "herald_connections_rejected_total",
            "Connection attempts refused.",
            &self.connections_rejected,
        );
        counter(
            out,
            "herald_messages_received_total",
            "Messages received from clients.",
            &self.messages_received,
        );
        counter(
            out,
            "herald_messages_published_total",
            "Publications accepted, per channel.",
            &self.messages_published,
        );
        counter(
            out,
            "herald_publishes_deduplicated_total",
            "Publishes not delivered because they repeated an idempotency key.",
            &self.publishes_deduplicated,
        );
        counter(
            out,
            "herald_publishes_unchanged_total",
            "Publications dropped by dedupe: same payload as the channel's previous one.",
            &self.publishes_unchanged,
        );
        counter(
            out,
            "herald_recoveries_succeeded_total",
            "Recoveries that replayed every missed publication.",
            &self.recoveries_succeeded,
        );
        counter(
            out,
            "herald_recoveries_failed_total",
            "Recoveries reported as not possible (recovered: false).",
            &self.recoveries_failed,
        );
        counter(
            out,
            "herald_recovered_publications_total",
            "Publications replayed from history by recoveries.",
            &self.recovered_publications,
        );
        counter(
            out,
            "herald_messages_delivered_total",
            "Messages written to client sockets.",
            &self.messages_delivered,
        );
        counter(
            out,
            "herald_socket_writes_total",
            "Socket writes; messages delivered divided by this is the mean write batch.",
            &self.socket_writes,
        );
        counter(
            out,
            "herald_messages_dropped_total",
            "Messages dropped because a connection's queue overflowed or it was closing.",
            &self.messages_dropped,
        );
        counter(
            out,
            "herald_slow_consumer_disconnects_total",
            "Connections closed because they could not keep up.",
            &self.slow_consumer_disconnects,
        );
        counter(
            out,
            "herald_activity_timeouts_total",
            "Connections closed for silence past the activity timeout.",
            &self.activity_timeouts,
        );
        counter(
            out,
            "herald_client_errors_total",
            "Client requests refused with an error message.",
            &self.client_errors,
        );
        counter(
            out,
            "herald_api_requests_total",
            "HTTP API requests served.",
            &self.api_requests,
        );
        counter(
            out,
            "herald_api_errors_total",
            "HTTP API requests answered with an error status.",
            &self.api_errors,
        );
        counter(
            out,
            "herald_webhooks_sent_total",
            "Webhook requests answered with a 2xx.",
            &self.webhooks_sent,
        );
        counter(
            out,
            "herald_webhooks_failed_total",
            "Webhook batches given up after the retry window.",
            &self.webhooks_failed,
        );
        counter(
            out,
            "herald_webhooks_dropped_total",
            "Webhook events dropped because the sender's queue was full.",
            &self.webhooks_dropped,
        );
        gauge(
            out,
            "herald_webhook_queue_depth",
            "Webhook events waiting to be sent.",
            load(&self.webhooks_queued).max(0),
        );
        self.publish_to_write.render(
            out,
            "herald_publish_to_write_seconds",
            "Time from a publication entering this node to its frame being written to a socket.",
        );
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_histogram() {
        let m = Metrics::new();
        m.publish_to_write.observe(Duration::from_micros(50));
        let mut local = LocalHistogram::default();
        local.observe(Duration::from_millis(3));
        local.observe(Duration::from_secs(20));
        m.publish_to_write.merge(&local);
        Metrics::inc(&m.messages_delivered);
        let mut out = String::new();
        m.render_prometheus(&mut out, &[("herald_uptime_seconds", "Uptime.", 1.5)]);
        assert!(out.contains("herald_publish_to_write_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(out.contains("herald_publish_to_write_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("herald_publish_to_write_seconds_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("herald_publish_to_write_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("herald_publish_to_write_seconds_count 3\n"));
        assert!(out.contains("herald_messages_delivered_total 1\n"));
        assert!(out.contains("herald_uptime_seconds 1.5\n"));
    }
}
