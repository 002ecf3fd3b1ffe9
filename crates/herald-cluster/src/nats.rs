//! [`NatsBroker`]: fan-out over core NATS, paired with Redis for history, presence and
//! occupancy (core NATS keeps no state, so those stay where they are atomic).
//!
//! Subjects: `{prefix}.pub.{app}.{channel}` per channel (dots in names escaped as `%2E`, so a
//! name is always one subject token) and `{prefix}.control`.
//!
//! # What it guarantees, and what it does not
//! - **Delivery:** at most once, like core NATS. A node receives what is published while its
//!   connection is up. After a reconnect (async-nats reconnects and resubscribes by itself),
//!   every channel with history is caught up from the Redis stream after the last offset the
//!   node delivered, up to 1,000 publications, before newer ones. Publications on channels
//!   without history made during the outage are lost for that node.
//! - **Ordering:** publications on one channel published through **one node** reach every node
//!   in publish order: the node holds a per-channel lock from the Redis append (which assigns
//!   the offset) until the NATS publish is queued, and NATS keeps one connection's order.
//!   Publications on one channel from **different nodes** may interleave differently at
//!   different nodes, and offsets may then arrive out of order (by the few milliseconds
//!   between two nodes' appends). Use the Redis broker where cross-node order on one channel
//!   matters; it orders everything in Redis.
//! - **Atomicity:** a publication is appended to history before it is published; when the
//!   publish fails, the entry is withdrawn again. If the node dies between the two (a window
//!   of microseconds), the publication is in history but was not delivered live; clients that
//!   recover get it. The shared paired-broker rules (`relay.rs`) say exactly what holds.
//! - **Outage:** `publish`, `control` and `subscribe` fail at once with
//!   [`BrokerError::Unavailable`] while the NATS connection is down (async-nats would
//!   otherwise buffer them silently); `health` is degraded until it is back.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::broker::BrokerError;
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::redis::StreamLog;
use crate::relay::{self, Bus, Paired, Shared, unavailable};

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://[user:password@]host:port`, or several separated by commas.
    pub url: String,
    /// First token of every subject, so several clusters can share one NATS.
    pub prefix: String,
    /// The longest connect, subscribe and flush may take.
    pub timeout: Duration,
}

/// The NATS broker. See the module docs for its guarantees.
pub type NatsBroker = Paired<NatsBus>;

/// The NATS side of a [`NatsBroker`]: the connection and the subjects. Made only by
/// [`NatsBroker::new`].
pub struct NatsBus {
    /// Where NATS is, the subject prefix and the deadlines.
    settings: NatsSettings,
    /// The NATS client, once connected the first time (it reconnects by itself).
    client: Mutex<Option<async_nats::Client>>,
    /// Bumped at every reconnect: channel tasks then catch up from history.
    reconnects: watch::Sender<u64>,
}

/// A name as one subject token: `.` (the token separator) escaped as `%2E`. Channel names
/// and app ids never contain `%`, `*`, `>` or whitespace.
fn token(name: &str) -> String {
    name.replace('.', "%2E")
}

impl NatsBroker {
    /// A broker that connects to NATS on `start`, with history in `log`.
    pub fn new(settings: NatsSettings, log: StreamLog) -> Self {
        Paired::with_bus(
            NatsBus {
                settings,
                client: Mutex::new(None),
                reconnects: watch::channel(0).0,
            },
            log,
        )
    }
}

impl NatsBus {
    /// The client, if connected now.
    fn connected(&self) -> Result<async_nats::Client, BrokerError> {
        let client = self
            .client
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to NATS yet"))?;
        if client.connection_state() != State::Connected {
            return Err(unavailable("NATS connection is down"));
        }
        Ok(client)
    }
}

impl Bus for NatsBus {
    /// The channel's delivery task (dropping its subscriber unsubscribes).
    type Receiver = tokio::task::JoinHandle<()>;
    const NAME: &'static str = "nats";
    const SERVICE: &'static str = "NATS";
    const BROKER: &'static str = "NatsBroker";

    fn route(&self, app_id: &str, channel: &str) -> String {
        format!(
            "{}.pub.{}.{}",
            self.settings.prefix,
            token(app_id),
            token(channel)
        )
    }

    fn control_route(&self) -> String {
        format!("{}.control", self.settings.prefix)
    }

    fn ready(&self) -> Result<(), BrokerError> {
        self.connected().map(|_| ())
    }

    async fn send(&self, route: String, frame: Vec<u8>) -> Result<(), BrokerError> {
        self.connected()?
            .publish(route, Bytes::from(frame))
            .await
            .map_err(unavailable)
    }

    async fn receive(
        shared: &Arc<Shared<Self>>,
        route: &str,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Self::Receiver, BrokerError> {
        let bus = &shared.bus;
        let client = bus.connected()?;
        let timeout = bus.settings.timeout;
        let subscriber = tokio::time::timeout(timeout, client.subscribe(route.to_owned()))
            .await
            .map_err(|_| unavailable("NATS subscribe timed out"))?
            .map_err(unavailable)?;
        // The server has the subscription once a flush round trip is done.
        tokio::time::timeout(timeout, client.flush())
            .await
            .map_err(|_| unavailable("NATS flush timed out"))?
            .map_err(unavailable)?;
        Ok(tokio::spawn(channel_task(
            Arc::downgrade(shared),
            Arc::from(app_id),
            channel.clone(),
            subscriber,
            bus.reconnects.subscribe(),
        )))
    }

    async fn ignore(&self, _route: &str, task: Self::Receiver) {
        task.abort(); // dropping its subscriber unsubscribes
    }

    async fn run(shared: Weak<Shared<Self>>) {
        connect(shared).await;
    }
}

async fn channel_task(
    shared: Weak<Shared<NatsBus>>,
    app_id: Arc<str>,
    channel: ChannelName,
    mut subscriber: async_nats::Subscriber,
    mut reconnects: watch::Receiver<u64>,
) {
    let mut delivered = relay::Delivered::default();
    loop {
        tokio::select! {
            msg = subscriber.next() => {
                let Some(msg) = msg else { return };
                let Some(shared) = shared.upgrade() else { return };
                let Some(handler) = shared.handler.get() else { return };
                relay::deliver(handler, &mut delivered, &msg.payload);
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(shared) = shared.upgrade() else { return };
                let Some(handler) = shared.handler.get().cloned() else { return };
                relay::catch_up(&shared.log, &handler, &app_id, &channel, &mut delivered).await;
            }
        }
    }
}

async fn control_task(shared: Weak<Shared<NatsBus>>, mut subscriber: async_nats::Subscriber) {
    while let Some(msg) = subscriber.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(handler) = shared.handler.get() else {
            return;
        };
        relay::deliver_control(handler, &msg.payload);
    }
}

/// What a connection event means: health, and a catch-up after a reconnect.
async fn on_event(shared: Weak<Shared<NatsBus>>, event: async_nats::Event) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    match event {
        async_nats::Event::Connected => {
            let was_down = shared.problem.lock().take().is_some();
            if was_down && shared.bus.client.lock().is_some() {
                info!("NATS reconnected; catching up channels with history");
                shared.bus.reconnects.send_modify(|n| *n += 1);
            }
        }
        async_nats::Event::Disconnected => {
            warn!("NATS connection lost; reconnecting");
            *shared.problem.lock() = Some("NATS connection lost".into());
        }
        other => debug!(event = %other, "NATS event"),
    }
}

/// Connect (retrying until it works), subscribe to control messages, and follow the
/// connection's events for health and catch-up.
async fn connect(weak: Weak<Shared<NatsBus>>) {
    let Some(shared) = weak.upgrade() else { return };
    let settings = &shared.bus.settings;
    let events = weak.clone();
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(settings.timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let cap = Duration::from_millis(100) * 2u32.saturating_pow(attempts.min(6) as u32);
            let cap = cap.min(Duration::from_secs(5));
            cap / 2 + (cap / 2).mul_f64(rand::random::<f64>())
        })
        .event_callback(move |event| on_event(events.clone(), event));
    let url = settings.url.clone();
    drop(shared);
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(shared) = weak.upgrade() {
                *shared.problem.lock() = Some(format!("cannot connect to NATS: {e}"));
            }
            return;
        }
    };
    let Some(shared) = weak.upgrade() else { return };
    let bus = &shared.bus;
    match client.subscribe(bus.control_route()).await {
        Ok(sub) => {
            tokio::spawn(control_task(weak.clone(), sub));
        }
        Err(e) => warn!(error = %e, "cannot subscribe to NATS control messages"),
    }
    let _ = tokio::time::timeout(bus.settings.timeout, client.flush()).await;
    *bus.client.lock() = Some(client);
    if bus.client.lock().as_ref().map(|c| c.connection_state()) == Some(State::Connected) {
        *shared.problem.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_subject_tokens() {
        assert_eq!(token("private-orders.1"), "private-orders%2E1");
        assert_eq!(token("a..b"), "a%2E%2Eb");
    }
}
