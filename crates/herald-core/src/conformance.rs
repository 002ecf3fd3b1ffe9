//! The conformance suites for the backend traits: one set of checks of the contracts written
//! on [`Broker`], [`HistoryStore`] and [`PresenceManager`], run against every implementation
//! (the in-memory ones in this crate's tests; cluster backends in theirs). A backend is
//! correct when it passes the suite, not when it passes tests of its own.
//!
//! Compiled for this crate's tests and, for other crates, with the `conformance` feature.
//! The checks panic with a message naming the broken rule.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{ChannelName, CloseCode, SocketId};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::broker::{Broker, BrokerHandler, BrokerHealth, Control, Published};
use crate::history::{HistoryPolicy, HistoryQuery, HistoryStore};
use crate::presence::{JoinOutcome, PresenceManager};
use crate::publication::{EventData, Member, Payload, Publication};
use crate::raw_json::RawJson;

/// How long a check waits for deliveries.
const WAIT: Duration = Duration::from_secs(10);

/// A [`BrokerHandler`] that records what it is handed.
#[derive(Default)]
pub struct Recorder {
    publications: Mutex<Vec<Arc<Publication>>>,
    controls: Mutex<Vec<Control>>,
    changed: Notify,
}

impl BrokerHandler for Recorder {
    fn handle_publication(&self, publication: Arc<Publication>) {
        self.publications.lock().push(publication);
        self.changed.notify_waiters();
    }

    fn handle_control(&self, control: Control) {
        self.controls.lock().push(control);
        self.changed.notify_waiters();
    }

    fn local_subscribers(&self, _: &str, _: &ChannelName) -> usize {
        // The suites never unsubscribe: every subscribed channel keeps a subscriber.
        1
    }
}

impl Recorder {
    /// Wait until `done` holds for the recorded publications, or fail naming `what`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Arc<Publication>]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if done(&self.publications.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let n = self.publications.lock().len();
                panic!("broker contract: {what} (after {n} publications)");
            }
        }
    }
}

fn event(app: &str, channel: &ChannelName, n: u64) -> Publication {
    Publication::new(
        Arc::from(app),
        channel.clone(),
        Arc::from(format!("m{n}")),
        Payload::Event {
            event: Arc::from("n"),
            data: EventData::Json(RawJson::from_value(&serde_json::json!({ "n": n }))),
            user_id: None,
        },
        None,
        n,
    )
}

fn number(p: &Publication) -> u64 {
    match &p.payload {
        Payload::Event { data, .. } => {
            let v: serde_json::Value = serde_json::from_slice(&data.native_json()).expect("JSON");
            v["n"].as_u64().expect("n")
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

/// Run every broker and history check. `make` builds a fresh, unstarted broker and the
/// history store it appends to.
pub async fn broker_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn Broker>, Arc<dyn HistoryStore>)>,
{
    delivers_every_publication_in_order(make().await).await;
    delivers_control_messages(make().await).await;
    history_offsets_follow_delivery_order(make().await).await;
    history_reads_dedupe_and_clear(make().await).await;
}

async fn started(broker: &Arc<dyn Broker>) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::default());
    broker
        .start(recorder.clone())
        .expect("broker contract: start succeeds");
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.health() != BrokerHealth::Healthy {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker contract: a started broker becomes healthy once its backend is reachable \
             (still {:?})",
            broker.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorder
}

async fn delivers_every_publication_in_order(
    (broker, _): (Arc<dyn Broker>, Arc<dyn HistoryStore>),
) {
    let rec = started(&broker).await;
    let ch = ChannelName::new("conformance.order").unwrap();
    broker.subscribe("app", &ch).await.expect("subscribe");
    for n in 1..=500 {
        broker
            .publish(event("app", &ch, n), None)
            .await
            .expect("publish");
    }
    rec.wait_for("every publication is delivered", |p| p.len() >= 500)
        .await;
    let got: Vec<u64> = rec.publications.lock().iter().map(|p| number(p)).collect();
    assert_eq!(
        got,
        (1..=500).collect::<Vec<_>>(),
        "broker contract: one channel's publications arrive in publish order, once each"
    );
}

async fn delivers_control_messages((broker, _): (Arc<dyn Broker>, Arc<dyn HistoryStore>)) {
    let rec = started(&broker).await;
    broker
        .control(Control::DisconnectUser {
            app_id: Arc::from("app"),
            user_id: Arc::from("u1"),
            code: CloseCode::Terminated,
        })
        .await
        .expect("control");
    let deadline = tokio::time::Instant::now() + WAIT;
    while rec.controls.lock().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker contract: control messages reach every node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        &rec.controls.lock()[0],
        Control::DisconnectUser { user_id, code: CloseCode::Terminated, .. } if &**user_id == "u1"
    ));
}

fn policy() -> HistoryPolicy {
    HistoryPolicy {
        size: 10_000,
        ttl: Duration::from_secs(300),
        dedupe_window: None,
    }
}

async fn history_offsets_follow_delivery_order(
    (broker, _): (Arc<dyn Broker>, Arc<dyn HistoryStore>),
) {
    let rec = started(&broker).await;
    let ch = ChannelName::new("conformance.offsets").unwrap();
    broker.subscribe("app", &ch).await.expect("subscribe");
    // Four concurrent publishers on one channel.
    let mut tasks = Vec::new();
    for k in 0..4u64 {
        let (broker, ch) = (broker.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..200 {
                match broker
                    .publish(event("app", &ch, k * 1000 + i), Some(&policy()))
                    .await
                    .expect("publish")
                {
                    Published::Sent(p) => offsets.push(p.position.clone().expect("position")),
                    Published::Unchanged(_) => panic!("no dedupe configured"),
                }
            }
            offsets
        }));
    }
    let mut epochs = std::collections::HashSet::new();
    for t in tasks {
        for pos in t.await.unwrap() {
            epochs.insert(pos.epoch);
        }
    }
    assert_eq!(epochs.len(), 1, "history contract: one stream, one epoch");
    rec.wait_for("every publication is delivered", |p| p.len() >= 800)
        .await;
    let offsets: Vec<u64> = rec
        .publications
        .lock()
        .iter()
        .map(|p| {
            p.position
                .as_ref()
                .expect("delivered with its position")
                .offset
        })
        .collect();
    assert_eq!(
        offsets,
        (1..=800).collect::<Vec<_>>(),
        "history contract: offsets count from 1 without gaps, and reach nodes in order"
    );
}

async fn history_reads_dedupe_and_clear(
    (broker, history): (Arc<dyn Broker>, Arc<dyn HistoryStore>),
) {
    let _rec = started(&broker).await;
    let ch = ChannelName::new("conformance.history").unwrap();
    let small = HistoryPolicy {
        size: 3,
        ..policy()
    };
    for n in 1..=5 {
        broker
            .publish(event("app", &ch, n), Some(&small))
            .await
            .expect("publish");
    }
    let page = history
        .read(
            "app",
            &ch,
            &HistoryQuery {
                limit: 100,
                ..HistoryQuery::default()
            },
            None,
        )
        .await
        .expect("read");
    let offsets: Vec<u64> = page
        .publications
        .iter()
        .map(|p| p.position.as_ref().unwrap().offset)
        .collect();
    assert_eq!(
        offsets,
        vec![3, 4, 5],
        "history contract: size keeps the newest"
    );
    assert_eq!((page.top.offset, page.first_offset), (5, 3));
    let after = history
        .read(
            "app",
            &ch,
            &HistoryQuery {
                after_offset: Some(3),
                limit: 1,
                ..HistoryQuery::default()
            },
            None,
        )
        .await
        .expect("read");
    assert_eq!(after.publications.len(), 1);
    assert!(
        after.truncated,
        "history contract: a limited read says it was truncated"
    );

    let dedupe = HistoryPolicy {
        dedupe_window: Some(Duration::from_secs(60)),
        ..policy()
    };
    let d = ChannelName::new("conformance.dedupe").unwrap();
    assert!(matches!(
        broker.publish(event("app", &d, 1), Some(&dedupe)).await,
        Ok(Published::Sent(_))
    ));
    assert!(
        matches!(
            broker.publish(event("app", &d, 1), Some(&dedupe)).await,
            Ok(Published::Unchanged(_))
        ),
        "history contract: an equal payload within the window is not sent"
    );

    assert!(history.clear("app", &ch).await.expect("clear"));
    let Published::Sent(p) = broker
        .publish(event("app", &ch, 6), Some(&small))
        .await
        .unwrap()
    else {
        panic!("sent");
    };
    let pos = p.position.clone().unwrap();
    assert_eq!(
        pos.offset, 1,
        "history contract: a cleared stream starts again"
    );
    assert_ne!(
        pos.epoch, page.top.epoch,
        "history contract: with a new epoch"
    );
    let stats = history.stats(Some("app")).await.expect("stats");
    assert!(stats.streams >= 1 && stats.publications >= 1);
}

/// Run every presence check against fresh managers from `make`.
pub async fn presence_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceManager>>,
{
    first_and_last_connections(make().await).await;
    member_limit(make().await).await;
    concurrent_joins_announce_once(make().await).await;
}

fn member(user: &str, info: serde_json::Value) -> Member {
    Member {
        user_id: Arc::from(user),
        info: RawJson::from_value(&info),
    }
}

async fn first_and_last_connections(p: Arc<dyn PresenceManager>) {
    let ch = ChannelName::new("presence-conformance").unwrap();
    let s = |n| SocketId::new(n, n);
    let ann = member("ann", serde_json::json!({"tab": 1}));
    let ann2 = member("ann", serde_json::json!({"tab": 2}));
    let bob = member("bob", serde_json::Value::Null);
    assert_eq!(
        p.join("app", &ch, s(1), &ann, 100).await.unwrap(),
        JoinOutcome::FirstConnection
    );
    assert_eq!(
        p.join("app", &ch, s(2), &ann2, 100).await.unwrap(),
        JoinOutcome::AnotherConnection,
        "presence contract: a user's second connection is not a new member"
    );
    assert_eq!(
        p.join("app", &ch, s(3), &bob, 100).await.unwrap(),
        JoinOutcome::FirstConnection
    );
    let members = p.members("app", &ch).await.unwrap();
    assert_eq!(
        members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(),
        vec!["ann", "bob"],
        "presence contract: each user once, in join order"
    );
    assert_eq!(
        members[0].info, ann.info,
        "presence contract: the first connection's info"
    );
    assert_eq!(p.count("app", &ch).await.unwrap(), 2);
    assert!(
        !p.leave("app", &ch, s(1), "ann")
            .await
            .unwrap()
            .last_connection
    );
    assert!(
        p.leave("app", &ch, s(2), "ann")
            .await
            .unwrap()
            .last_connection,
        "presence contract: the last connection's leave is the member's"
    );
    assert_eq!(p.count("app", &ch).await.unwrap(), 1);
    // Another app's channel of the same name is separate.
    assert_eq!(p.count("other", &ch).await.unwrap(), 0);
}

async fn member_limit(p: Arc<dyn PresenceManager>) {
    let ch = ChannelName::new("presence-full").unwrap();
    let s = |n| SocketId::new(n, n);
    let m = |u: &str| member(u, serde_json::Value::Null);
    assert_eq!(
        p.join("app", &ch, s(1), &m("a"), 2).await.unwrap(),
        JoinOutcome::FirstConnection
    );
    assert_eq!(
        p.join("app", &ch, s(2), &m("b"), 2).await.unwrap(),
        JoinOutcome::FirstConnection
    );
    assert_eq!(
        p.join("app", &ch, s(3), &m("c"), 2).await.unwrap(),
        JoinOutcome::Full,
        "presence contract: a new user is refused at the limit"
    );
    assert_eq!(
        p.join("app", &ch, s(4), &m("a"), 2).await.unwrap(),
        JoinOutcome::AnotherConnection,
        "presence contract: a present user's new connection is not refused"
    );
    assert_eq!(p.count("app", &ch).await.unwrap(), 2);
}

async fn concurrent_joins_announce_once(p: Arc<dyn PresenceManager>) {
    let ch = ChannelName::new("presence-race").unwrap();
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let (p, ch) = (p.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            p.join(
                "app",
                &ch,
                SocketId::new(n, n),
                &member("zed", serde_json::Value::Null),
                100,
            )
            .await
            .unwrap()
        }));
    }
    let mut first = 0;
    for t in tasks {
        if t.await.unwrap() == JoinOutcome::FirstConnection {
            first += 1;
        }
    }
    assert_eq!(
        first, 1,
        "presence contract: concurrent joins of one user announce once"
    );
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let (p, ch) = (p.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            p.leave("app", &ch, SocketId::new(n, n), "zed")
                .await
                .unwrap()
                .last_connection
        }));
    }
    let mut last = 0;
    for t in tasks {
        if t.await.unwrap() {
            last += 1;
        }
    }
    assert_eq!(
        last, 1,
        "presence contract: concurrent leaves announce the last once"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Backends;
    use crate::presence::memory::MemoryPresence;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_broker_and_history_conform() {
        broker_suite(|| async {
            let b = Backends::memory(2, 64);
            (b.broker, b.history)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_presence_conforms() {
        presence_suite(|| async { Arc::new(MemoryPresence::new()) as Arc<dyn PresenceManager> })
            .await;
    }
}
