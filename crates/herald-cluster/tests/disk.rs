//! The disk history store (`history.store = "disk"`): the core's broker and history
//! conformance suite on it, under both fsync policies, and what a restart finds after a
//! clean close, after the process died, and after the machine rebooted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_cluster::disk::{DiskSync, FILE_NAME, OpenReport, open_history};
use herald_core::broker::memory::MemoryBroker;
use herald_core::broker::{Broker, Published};
use herald_core::conformance::{Recorder, broker_suite};
use herald_core::history::journal::JournalLimits;
use herald_core::history::memory::MemoryHistory;
use herald_core::history::{HistoryPage, HistoryPolicy, HistoryQuery, HistoryStore};
use herald_core::publication::{EventData, Payload, Publication};
use herald_core::raw_json::RawJson;
use herald_protocol::ChannelName;

const LIMITS: JournalLimits = JournalLimits {
    queue: 256,
    batch: 64,
};

fn open(dir: &Path, sync: DiskSync, boot: &str) -> (Arc<MemoryHistory>, OpenReport) {
    open_history(dir, sync, LIMITS, boot).expect("the store opens")
}

fn broker(history: &Arc<MemoryHistory>) -> Arc<MemoryBroker> {
    let broker = Arc::new(MemoryBroker::new(2, 64, history.clone()));
    broker.start(Arc::new(Recorder::default())).expect("starts");
    broker
}

fn policy(size: usize, ttl: Duration) -> HistoryPolicy {
    HistoryPolicy {
        size,
        ttl,
        dedupe_window: None,
    }
}

fn publication(channel: &ChannelName, n: u64) -> Publication {
    Publication::new(
        Arc::from("app"),
        channel.clone(),
        Arc::from(format!("id-{n}")),
        Payload::Event {
            event: Arc::from("reading"),
            data: EventData::Json(RawJson::from_value(&serde_json::json!({ "n": n }))),
            user_id: None,
        },
        None,
        1_000 + n,
    )
}

async fn publish(broker: &MemoryBroker, channel: &ChannelName, n: u64, policy: &HistoryPolicy) {
    match broker.publish(publication(channel, n), Some(policy)).await {
        Ok(Published::Sent(p)) => assert_eq!(p.position.as_ref().map(|p| p.offset), Some(n)),
        other => panic!("publish {n}: {other:?}"),
    }
}

async fn read(history: &MemoryHistory, channel: &ChannelName) -> HistoryPage {
    let query = HistoryQuery {
        limit: 1000,
        ..HistoryQuery::default()
    };
    history
        .read("app", channel, &query, None)
        .await
        .expect("read")
}

fn offsets(page: &HistoryPage) -> Vec<u64> {
    page.publications
        .iter()
        .map(|p| p.position.as_ref().expect("position").offset)
        .collect()
}

async fn close(history: Arc<MemoryHistory>) {
    history
        .journal()
        .expect("durable")
        .close()
        .await
        .expect("closes cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_history_conforms_with_and_without_fsync() {
    for sync in [DiskSync::Off, DiskSync::Always] {
        broker_suite(|| async move {
            let dir = tempfile::tempdir().expect("tempdir").keep();
            let (history, _) = open(&dir, sync, "boot-a");
            (
                Arc::new(MemoryBroker::new(2, 64, history.clone())) as Arc<dyn Broker>,
                history as Arc<dyn HistoryStore>,
            )
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_each_streams_epoch_offsets_and_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = ChannelName::new("feed").unwrap();
    let p = policy(5, Duration::from_secs(300));
    let (history, report) = open(dir.path(), DiskSync::Off, "boot-a");
    assert_eq!(report, OpenReport::default(), "a new store is empty");
    let b = broker(&history);
    for n in 1..=8 {
        publish(&b, &feed, n, &p).await;
    }
    let before = read(&history, &feed).await;
    assert_eq!(
        offsets(&before),
        [4, 5, 6, 7, 8],
        "size keeps the newest five"
    );
    drop(b);
    close(history).await;

    let (history, report) = open(dir.path(), DiskSync::Off, "boot-b");
    assert_eq!(
        (
            report.streams,
            report.publications,
            report.unclean,
            report.epochs_renewed
        ),
        (1, 5, false, false),
        "a cleanly closed store is restored whole, even after a reboot"
    );
    let after = read(&history, &feed).await;
    assert_eq!(after.top, before.top, "same epoch, same newest offset");
    assert_eq!(offsets(&after), [4, 5, 6, 7, 8]);
    let json = |page: &HistoryPage| -> Vec<String> {
        page.publications
            .iter()
            .map(|p| match &p.payload {
                Payload::Event { data, .. } => String::from_utf8_lossy(&data.native_json()).into(),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(
        json(&after),
        json(&before),
        "payloads come back as they were"
    );
    let b = broker(&history);
    publish(&b, &feed, 9, &p).await;
    let next = read(&history, &feed).await;
    assert_eq!(
        next.top.epoch, before.top.epoch,
        "appends continue the same stream"
    );
    assert_eq!(offsets(&next), [5, 6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stream_handed_to_a_subscriber_keeps_its_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quiet = ChannelName::new("quiet").unwrap();
    let p = policy(10, Duration::from_secs(300));
    let (history, _) = open(dir.path(), DiskSync::Always, "boot-a");
    let created = history
        .read(
            "app",
            &quiet,
            &HistoryQuery {
                limit: 10,
                ..HistoryQuery::default()
            },
            Some(&p),
        )
        .await
        .expect("read");
    close(history).await;
    let (history, _) = open(dir.path(), DiskSync::Always, "boot-a");
    let b = broker(&history);
    publish(&b, &quiet, 1, &p).await;
    let page = read(&history, &quiet).await;
    assert_eq!(
        page.top.epoch, created.top.epoch,
        "the first publication after the restart lands in the stream the subscriber knows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_process_dies_epochs_are_kept_unless_the_machine_rebooted() {
    let feed = ChannelName::new("feed").unwrap();
    let p = policy(100, Duration::from_secs(300));
    for (sync, boot_after, renewed) in [
        (DiskSync::Off, "boot-a", false),
        (DiskSync::Off, "boot-b", true),
        (DiskSync::Always, "boot-b", false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (history, _) = open(dir.path(), sync, "boot-a");
        let b = broker(&history);
        for n in 1..=3 {
            publish(&b, &feed, n, &p).await;
        }
        let before = read(&history, &feed).await;
        // No close: the writer thread ends as it would if the process were killed.
        drop((b, history));
        tokio::time::sleep(Duration::from_millis(100)).await;

        let (history, report) = open(dir.path(), sync, boot_after);
        assert!(report.unclean, "{sync:?}: the unclean stop is noticed");
        assert_eq!(report.epochs_renewed, renewed, "{sync:?} then {boot_after}");
        let after = read(&history, &feed).await;
        assert_eq!(
            offsets(&after),
            [1, 2, 3],
            "{sync:?}: every committed entry is there"
        );
        assert_eq!(
            after.top.epoch != before.top.epoch,
            renewed,
            "{sync:?} then {boot_after}: a reboot without fsync starts a new epoch, so a \
             client holding an offset that power loss may have taken is told, not misled"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_expire_while_the_node_is_down_are_dropped_on_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (short, long) = (
        ChannelName::new("short").unwrap(),
        ChannelName::new("long").unwrap(),
    );
    let (history, _) = open(dir.path(), DiskSync::Off, "boot-a");
    let b = broker(&history);
    publish(&b, &short, 1, &policy(10, Duration::from_millis(300))).await;
    publish(&b, &long, 1, &policy(10, Duration::from_secs(300))).await;
    drop(b);
    close(history).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (history, report) = open(dir.path(), DiskSync::Off, "boot-a");
    assert_eq!((report.streams, report.expired), (1, 1));
    assert_eq!(offsets(&read(&history, &long).await), [1]);
    assert!(read(&history, &short).await.publications.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_private_to_heralds_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("history");
    let (history, _) = open(&store, DiskSync::Off, "boot-a");
    close(history).await;
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join(FILE_NAME)), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_exactly_what_memory_held_after_concurrent_appends_and_clears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let channels: Vec<ChannelName> = (0..4)
        .map(|i| ChannelName::new(&format!("busy.{i}")).unwrap())
        .collect();
    let p = policy(20, Duration::from_secs(300));
    let (history, _) = open(dir.path(), DiskSync::Off, "boot-a");
    let b = broker(&history);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8u64 {
        let (b, history, channels, p) = (b.clone(), history.clone(), channels.clone(), p.clone());
        tasks.spawn(async move {
            for n in 0..60u64 {
                let channel = &channels[((task + n) % 4) as usize];
                if n % 25 == 24 {
                    history.clear("app", channel).await.expect("clear");
                } else {
                    let published = b.publish(publication(channel, n), Some(&p)).await;
                    assert!(matches!(published, Ok(Published::Sent(_))), "{published:?}");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    let mut before = Vec::new();
    for channel in &channels {
        let page = read(&history, channel).await;
        before.push((page.top.clone(), offsets(&page)));
    }
    drop(b);
    close(history).await;

    let (history, _) = open(dir.path(), DiskSync::Off, "boot-a");
    for (channel, (top, kept)) in channels.iter().zip(before) {
        let page = read(&history, channel).await;
        assert_eq!(page.top, top, "{channel}: epoch and newest offset");
        assert_eq!(offsets(&page), kept, "{channel}: the same window");
    }
}
