//! [`Journal`]: what makes [`MemoryHistory`](super::memory::MemoryHistory) durable.
//!
//! The streams stay in memory, where reads and recovery are served from; every change to
//! them is also written, in the order it happened, by a [`JournalWriter`] (an embedded
//! database, in `herald-cluster`) on a thread of its own. A restart loads the streams back
//! with their epochs and offsets, so clients recover across it.
//!
//! # Write path
//! 1. A publish reserves room in the journal's bounded queue before it takes the stream's
//!    lock (a full queue makes publishers wait: backpressure, never an unbounded buffer).
//! 2. Under the lock the publication gets its offset and is queued with a completion.
//! 3. The writer thread takes up to `batch` records at once and commits them as one
//!    transaction (group commit), fsyncing or not as its policy says.
//! 4. Only then are the completions run, in queue order: the publication enters the
//!    broker's dispatch queue and the publish is acknowledged. So a publication a client
//!    has seen, or a publisher was told about, is on disk as far as the policy promises,
//!    and offsets still reach subscribers in order.
//!
//! A writer that fails (disk full, I/O error) is retried with backoff while publishers
//! wait; the error is logged once per attempt with the store's message.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::ChannelName;
use tokio::sync::{mpsc, oneshot};

use super::HistoryError;
use crate::publication::Publication;

/// Run when a record is committed: hands the publication on.
pub type Committed = Box<dyn FnOnce() + Send>;

/// One change to the streams, in the order it happened.
#[derive(Debug)]
pub enum JournalRecord {
    /// A publication was appended at its position (set on it).
    Appended {
        /// The publication, with its position.
        publication: Arc<Publication>,
        /// Entries of the stream below this offset are gone (size and TTL bounds).
        keep_from: u64,
        /// The stream was created by this append (a new epoch): drop anything stored under
        /// the old one first.
        new_stream: bool,
        /// The stream's TTL, kept so a restart expires it on time.
        ttl: Duration,
        /// The payload digest for dedupe, when the channel dedupes.
        digest: Option<[u8; 32]>,
        /// Milliseconds since the Unix epoch when it was appended.
        at_ms: u64,
    },
    /// A stream was created empty (a subscriber was handed its epoch): keep that epoch.
    Created {
        /// The app.
        app_id: Arc<str>,
        /// The channel.
        channel: ChannelName,
        /// The new stream's epoch.
        epoch: Arc<str>,
        /// The stream's TTL.
        ttl: Duration,
        /// Milliseconds since the Unix epoch when it was created.
        at_ms: u64,
    },
    /// A stream was cleared or expired.
    Removed {
        /// The app.
        app_id: Arc<str>,
        /// The channel.
        channel: ChannelName,
    },
}

/// A stream as a restart finds it.
#[derive(Debug)]
pub struct RestoredStream {
    /// The app.
    pub app_id: Arc<str>,
    /// The channel.
    pub channel: ChannelName,
    /// Its epoch, unchanged across the restart.
    pub epoch: Arc<str>,
    /// The offset of its newest publication.
    pub top: u64,
    /// Its TTL.
    pub ttl: Duration,
    /// Milliseconds since the Unix epoch of its newest append (or its creation).
    pub last_append_ms: u64,
    /// The newest payload digest and when it arrived (ms since the Unix epoch), for dedupe.
    pub last_digest: Option<([u8; 32], u64)>,
    /// Stored publications, oldest first, each with its position and the time it was
    /// appended (ms since the Unix epoch).
    pub entries: Vec<(Publication, u64)>,
}

/// The storage side of a durable history: runs on the journal's own thread.
pub trait JournalWriter: Send + 'static {
    /// Commit `records` as one transaction, durably as the writer's policy says. On error
    /// nothing of the batch may be visible after a restart, or all of it (a transaction).
    fn commit(&mut self, records: &[JournalRecord]) -> Result<(), String>;

    /// The store is being closed cleanly: everything committed is flushed.
    fn close(&mut self) -> Result<(), String>;
}

/// Limits of the journal's queue and batches.
#[derive(Debug, Clone, Copy)]
pub struct JournalLimits {
    /// Records queued before publishers wait.
    pub queue: usize,
    /// Most records committed in one transaction.
    pub batch: usize,
}

enum Message {
    Record(JournalRecord, Option<Committed>),
    Close(oneshot::Sender<Result<(), String>>),
}

/// Room for one record, reserved before a stream lock is taken.
pub struct JournalSlot(mpsc::OwnedPermit<Message>);

impl JournalSlot {
    /// Queue `record`; `then` runs once it is committed.
    pub fn write(self, record: JournalRecord, then: Option<Committed>) {
        self.0.send(Message::Record(record, then));
    }
}

/// The handle to a running journal: cheap to clone, closed with [`Journal::close`].
#[derive(Clone)]
pub struct Journal {
    /// The writer thread's queue.
    tx: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Start `writer` on a thread of its own.
    pub fn start(writer: Box<dyn JournalWriter>, limits: JournalLimits) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let batch = limits.batch.max(1);
        std::thread::Builder::new()
            .name("herald-history".into())
            .spawn(move || write_loop(writer, rx, batch))
            .expect("spawn the history writer thread");
        Self { tx }
    }

    /// Wait for room for one record.
    pub async fn reserve(&self) -> Result<JournalSlot, HistoryError> {
        self.tx
            .clone()
            .reserve_owned()
            .await
            .map(JournalSlot)
            .map_err(|_| HistoryError::Unavailable("the history writer has stopped".into()))
    }

    /// Room for one record if there is some now (for housekeeping that must not wait).
    pub fn try_reserve(&self) -> Option<JournalSlot> {
        self.tx.clone().try_reserve_owned().ok().map(JournalSlot)
    }

    /// Commit what is queued, mark the store cleanly closed and stop the writer. Records
    /// queued after this are not written.
    pub async fn close(&self) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Close(done)).await.is_err() {
            return Ok(());
        }
        wait.await
            .unwrap_or_else(|_| Err("the history writer stopped".into()))
    }
}

/// The writer thread: group commits until the queue closes or a close is asked for.
fn write_loop(mut writer: Box<dyn JournalWriter>, mut rx: mpsc::Receiver<Message>, batch: usize) {
    let mut records = Vec::with_capacity(batch);
    let mut then = Vec::with_capacity(batch);
    while let Some(first) = rx.blocking_recv() {
        let mut close = None;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record, done) => {
                    records.push(record);
                    then.extend(done);
                }
                Message::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if records.len() < batch {
                next = rx.try_recv().ok();
            }
        }
        if !records.is_empty() {
            commit_with_retry(&mut *writer, &records);
            records.clear();
            for done in then.drain(..) {
                done();
            }
        }
        if let Some(done) = close {
            rx.close();
            let _ = done.send(writer.close());
            return;
        }
    }
}

/// Commit a batch, retrying with backoff until the store takes it: what was delivered must
/// be stored, so publishers wait for a failing disk rather than lose history.
fn commit_with_retry(writer: &mut dyn JournalWriter, records: &[JournalRecord]) {
    let mut delay = Duration::from_millis(50);
    while let Err(error) = writer.commit(records) {
        tracing::error!(%error, retry_in = ?delay, "history store: commit failed");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
