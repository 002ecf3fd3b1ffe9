//! [`SessionHandle`]: one connection's bounded outbound queue, shared between the producers
//! (hub fan-out, direct sends, the session's own replies, the heartbeat) and the one
//! transport task that writes to the socket.
//!
//! # Design
//! - Items are already-encoded message bytes ([`bytes::Bytes`]), shared with every other
//!   subscriber of the same publication: a push is a reference-count increment, a short
//!   uncontended lock and, only when the queue was empty, a wake-up.
//! - The writer takes the whole queue at once ([`SessionHandle::take_into`]), so it can write
//!   every queued frame in one vectored write and producers never wait on a socket.
//! - The queue is bounded by bytes and by count. A push beyond either bound discards the
//!   queue, marks the connection closing with [`CloseCode::SlowConsumer`] and wakes the
//!   writer, which closes the socket. Nothing ever grows without limit, and other
//!   subscribers are not slowed: the producer returns immediately either way.
//! - Control items (pongs) count against the same bounds: nothing reaches a queue unbounded.
//! - One slow connection is counted once in `slow_consumer_disconnects`, whichever of the
//!   queue overflow and the writer's timeout noticed it first.
//! - An idle connection's queue holds no allocation.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use herald_protocol::{CloseCode, SocketId};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::wire::Protocol;
use crate::wire::Transport;

/// One item for the writer.
#[derive(Debug)]
pub enum OutItem {
    /// An encoded protocol message (a JSON text for the native protocol).
    Message {
        /// The encoded message, shared with other subscribers.
        bytes: Bytes,
        /// `bytes` is the message compressed with permessage-deflate (the WebSocket writer
        /// sets RSV1). Only for connections that negotiated it.
        compressed: bool,
        /// When the publication entered this node, for the latency histogram; `None` for
        /// replies and other messages that are not publications.
        published_at: Option<Instant>,
    },
    /// Answer a transport-level ping (a WebSocket pong with this payload).
    Pong(Bytes),
    /// Flush what precedes, then close the connection with this code.
    Close(CloseCode),
}

/// How a push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for writing.
    Queued,
    /// Dropped: the connection is already closing.
    Closing,
    /// This push overflowed the queue: the connection is now closing as a slow consumer.
    SlowConsumer,
}

/// The bounds of one outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Bytes of queued messages allowed.
    pub max_bytes: usize,
    /// Number of queued items allowed.
    pub max_items: usize,
}

/// Queue state behind the handle's lock.
#[derive(Debug, Default)]
struct Queue {
    /// Items waiting for the writer.
    items: VecDeque<OutItem>,
    /// Bytes of message payload in `items`.
    bytes: usize,
    /// Set once a close is queued; later pushes are dropped.
    closing: Option<CloseCode>,
    /// The writer is writing a batch it took with [`SessionHandle::take_batch_into`] and
    /// will look again before it waits: a push then needs no wake-up. Waking a writer
    /// whose write is pending costs a task poll and this lock for nothing.
    writing: bool,
}

/// A connection as the rest of the node sees it: its identity and its outbound queue.
#[derive(Debug)]
pub struct SessionHandle {
    /// The connection's public id.
    pub socket_id: SocketId,
    /// The app the connection belongs to (its id).
    pub app_id: Arc<str>,
    /// Which encoding this connection reads.
    pub protocol: Protocol,
    /// The authenticated user, once known (from the connection token, or a later sign-in).
    user_id: OnceLock<Arc<str>>,
    /// The queue itself. A parking_lot mutex: never held across an await, and uncontended
    /// except for the instant a producer and the writer meet.
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue goes from empty to non-empty (or a close is queued).
    notify: Notify,
    /// Node-clock milliseconds of the last message received from the client.
    last_activity_ms: AtomicU64,
    /// Node-clock milliseconds of the last heartbeat queued by the server.
    last_ping_ms: AtomicU64,
    /// Node-clock milliseconds when the connection was admitted.
    connected_ms: u64,
    /// Set once the client signed in or joined a private or presence channel: Pusher apps
    /// may require this within a timeout.
    authorized: AtomicBool,
    /// Bounds of the queue.
    limits: QueueLimits,
    /// Set when the server gives up on the connection (the shutdown grace period is over):
    /// its transport stops at once, mid-write or not.
    aborted: AtomicBool,
    /// Publications of at least this many encoded bytes reach this connection compressed
    /// (it negotiated permessage-deflate); `u32::MAX`: never.
    compress_from: u32,
    /// How the connection reaches the node, for the admin views.
    pub transport: Transport,
    /// When the connection's token expires (seconds since the Unix epoch; `u64::MAX`:
    /// never), for apps that enforce expiry; a refresh moves it.
    token_expires_at: AtomicU64,
    /// Set once the `refresh` hint went out for the current expiry.
    refresh_hinted: AtomicBool,
    /// The client's address (after trusted-proxy resolution), for the admin views.
    pub ip: IpAddr,
}

impl SessionHandle {
    /// A handle with an empty queue; `now_ms` is the node clock's current reading.
    pub fn new(
        socket_id: SocketId,
        app_id: Arc<str>,
        protocol: Protocol,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Self {
        Self {
            socket_id,
            app_id,
            protocol,
            user_id: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            last_activity_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            connected_ms: now_ms,
            authorized: AtomicBool::new(false),
            limits,
            aborted: AtomicBool::new(false),
            compress_from: u32::MAX,
            transport: Transport::WebSocket,
            ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            token_expires_at: AtomicU64::new(u64::MAX),
            refresh_hinted: AtomicBool::new(false),
        }
    }

    /// When the connection's token expires (`u64::MAX`: never).
    pub fn token_expires_at(&self) -> u64 {
        self.token_expires_at.load(Ordering::Relaxed)
    }

    /// The token now expires at `at` (a refresh, or admission); a new hint will go out
    /// when it does.
    pub fn set_token_expiry(&self, at: u64) {
        self.token_expires_at.store(at, Ordering::Relaxed);
        self.refresh_hinted.store(false, Ordering::Relaxed);
    }

    /// Mark the refresh hint as sent; whether it had not been.
    pub(crate) fn hint_refresh(&self) -> bool {
        !self.refresh_hinted.swap(true, Ordering::Relaxed)
    }

    /// Say how the connection reaches the node, and from where (the admin views show it).
    pub fn reached_by(mut self, transport: Transport, ip: IpAddr) -> Self {
        self.transport = transport;
        self.ip = ip;
        self
    }

    /// This handle, for a connection that negotiated permessage-deflate: publications of at
    /// least `threshold` encoded bytes reach it compressed.
    pub fn with_compression(mut self, threshold: usize) -> Self {
        self.compress_from = u32::try_from(threshold).unwrap_or(u32::MAX - 1);
        self
    }

    /// Whether the connection negotiated permessage-deflate (and its app allows it).
    pub fn negotiated_deflate(&self) -> bool {
        self.compress_from != u32::MAX
    }

    /// Whether a message of `len` encoded bytes reaches this connection compressed.
    pub fn compresses(&self, len: usize) -> bool {
        self.compress_from != u32::MAX && len >= self.compress_from as usize
    }

    /// The authenticated user id, if any.
    pub fn user_id(&self) -> Option<&Arc<str>> {
        self.user_id.get()
    }

    /// Record the user id. Returns false if a different user id was already recorded
    /// (a connection belongs to one user for its whole life).
    pub fn set_user_id(&self, user: Arc<str>) -> bool {
        match self.user_id.set(user.clone()) {
            Ok(()) => true,
            Err(_) => self.user_id.get().is_some_and(|u| *u == user),
        }
    }

    /// Node-clock milliseconds when the connection was admitted.
    pub fn connected_ms(&self) -> u64 {
        self.connected_ms
    }

    /// Mark the connection as authorised (signed in, or on a protected channel).
    pub fn mark_authorized(&self) {
        self.authorized.store(true, Ordering::Relaxed);
    }

    /// Whether the connection is authorised.
    pub fn is_authorized(&self) -> bool {
        self.authorized.load(Ordering::Relaxed)
    }

    /// Queue an encoded message, uncompressed.
    pub fn push_message(
        &self,
        bytes: Bytes,
        published_at: Option<Instant>,
        metrics: &Metrics,
    ) -> PushOutcome {
        self.push_frame((bytes, false), published_at, metrics)
    }

    /// Queue an encoded message as [`crate::Publication::frame_for`] chose it: its bytes,
    /// and whether they are compressed.
    pub fn push_frame(
        &self,
        (bytes, compressed): (Bytes, bool),
        published_at: Option<Instant>,
        metrics: &Metrics,
    ) -> PushOutcome {
        let len = bytes.len();
        self.enqueue(
            OutItem::Message {
                bytes,
                compressed,
                published_at,
            },
            len,
            metrics,
        )
    }

    /// Queue a control item (a pong). Bounded like messages: a client that sends pings and
    /// never reads the pongs is a slow consumer like any other.
    pub fn push_control(&self, item: OutItem, metrics: &Metrics) -> PushOutcome {
        let len = match &item {
            OutItem::Message { bytes, .. } | OutItem::Pong(bytes) => bytes.len(),
            OutItem::Close(_) => 0,
        };
        self.enqueue(item, len, metrics)
    }

    /// Queue `item` of `len` bytes within the queue's bounds; past them, discard the queue
    /// and close as a slow consumer.
    fn enqueue(&self, item: OutItem, len: usize, metrics: &Metrics) -> PushOutcome {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            drop(q);
            Metrics::inc(&metrics.messages_dropped);
            return PushOutcome::Closing;
        }
        if q.items.len() >= self.limits.max_items || q.bytes + len > self.limits.max_bytes {
            let dropped = q.items.len() as u64 + 1;
            // Free the memory now: these messages will never be written.
            q.items = VecDeque::new();
            q.bytes = 0;
            q.closing = Some(CloseCode::SlowConsumer);
            q.items.push_back(OutItem::Close(CloseCode::SlowConsumer));
            drop(q);
            metrics
                .messages_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            Metrics::inc(&metrics.slow_consumer_disconnects);
            self.notify.notify_one();
            return PushOutcome::SlowConsumer;
        }
        let wake = q.items.is_empty() && !q.writing;
        q.items.push_back(item);
        q.bytes += len;
        drop(q);
        if wake {
            self.notify.notify_one();
        }
        PushOutcome::Queued
    }

    /// The writer gave up on a write that made no progress in time: close as a slow
    /// consumer. Counted in `slow_consumer_disconnects` only if the queue had not already
    /// overflowed (which counted it), so one slow connection is counted once.
    pub fn close_slow_consumer(&self, metrics: &Metrics) {
        let mut q = self.queue.lock();
        if q.closing == Some(CloseCode::SlowConsumer) {
            return;
        }
        q.closing = Some(CloseCode::SlowConsumer);
        q.items = VecDeque::new();
        q.bytes = 0;
        drop(q);
        Metrics::inc(&metrics.slow_consumer_disconnects);
    }

    /// Ask the writer to flush what is queued and close with `code`. Only the first close
    /// counts (it returns `true`); the connection drops anything queued after it.
    pub fn close(&self, code: CloseCode) -> bool {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return false;
        }
        q.closing = Some(code);
        q.items.push_back(OutItem::Close(code));
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Make the transport stop now, whatever it is doing (writes included); its session is
    /// then released as on any close.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether [`SessionHandle::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// The close code, if a close has been queued.
    pub fn closing(&self) -> Option<CloseCode> {
        self.queue.lock().closing
    }

    /// Move every queued item into `out` (which the caller has emptied). Swapping the two
    /// deques keeps the lock hold time constant however long the queue is.
    pub fn take_into(&self, out: &mut VecDeque<OutItem>) {
        debug_assert!(out.is_empty());
        let mut q = self.queue.lock();
        std::mem::swap(&mut q.items, out);
        q.bytes = 0;
    }

    /// [`SessionHandle::take_into`] for a writer that drains the queue until it is empty:
    /// while the batch it took is not empty, pushes do not wake it (it looks again when the
    /// batch is written); once it finds the queue empty, they do again. Closes, overflows
    /// and aborts always wake it. A writer using this must call it again before it waits.
    pub fn take_batch_into(&self, out: &mut VecDeque<OutItem>) {
        debug_assert!(out.is_empty());
        let mut q = self.queue.lock();
        std::mem::swap(&mut q.items, out);
        q.bytes = 0;
        q.writing = !out.is_empty();
    }

    /// Wait until something is queued. Returns at once if something was queued since the
    /// last call (the wake-up is remembered).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Record client activity at node-clock time `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_activity_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Node-clock milliseconds of the last client activity.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    /// Node-clock milliseconds of the last heartbeat sent.
    pub fn last_ping_ms(&self) -> u64 {
        self.last_ping_ms.load(Ordering::Relaxed)
    }

    /// Record that a heartbeat was queued at `now_ms`.
    pub fn mark_pinged(&self, now_ms: u64) {
        self.last_ping_ms.store(now_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(max_bytes: usize, max_items: usize) -> SessionHandle {
        SessionHandle::new(
            SocketId::new(1, 2),
            Arc::from("app"),
            Protocol::Native,
            QueueLimits {
                max_bytes,
                max_items,
            },
            0,
        )
    }

    #[test]
    fn overflow_discards_the_queue_and_closes_once() {
        let m = Metrics::new();
        let h = handle(100, 10);
        for _ in 0..3 {
            assert_eq!(
                h.push_message(Bytes::from_static(&[0; 30]), None, &m),
                PushOutcome::Queued
            );
        }
        assert_eq!(
            h.push_message(Bytes::from_static(&[0; 30]), None, &m),
            PushOutcome::SlowConsumer
        );
        assert_eq!(
            h.push_message(Bytes::from_static(&[0; 1]), None, &m),
            PushOutcome::Closing
        );
        let mut out = VecDeque::new();
        h.take_into(&mut out);
        assert!(matches!(
            out.iter().collect::<Vec<_>>()[..],
            [OutItem::Close(CloseCode::SlowConsumer)]
        ));
        assert_eq!(Metrics::get(&m.slow_consumer_disconnects), 1);
        assert_eq!(Metrics::get(&m.messages_dropped), 5);
    }

    #[test]
    fn count_bound_applies_too() {
        let m = Metrics::new();
        let h = handle(1 << 20, 2);
        h.push_message(Bytes::from_static(b"a"), None, &m);
        h.push_message(Bytes::from_static(b"b"), None, &m);
        assert_eq!(
            h.push_message(Bytes::from_static(b"c"), None, &m),
            PushOutcome::SlowConsumer
        );
    }

    #[tokio::test]
    async fn wakes_the_writer_and_flushes_before_close() {
        let m = Metrics::new();
        let h = Arc::new(handle(1 << 20, 100));
        h.push_message(Bytes::from_static(b"x"), None, &m);
        h.close(CloseCode::GoingAway);
        h.close(CloseCode::Normal);
        h.notified().await;
        let mut out = VecDeque::new();
        h.take_into(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[1], OutItem::Close(CloseCode::GoingAway)));
        assert_eq!(h.closing(), Some(CloseCode::GoingAway));
    }

    /// Whether a wake-up is pending (without waiting for one).
    async fn woken(h: &SessionHandle) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(20), h.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_writer_draining_its_batch_is_woken_only_when_it_must_be() {
        let m = Metrics::new();
        let h = handle(100, 10);
        h.push_message(Bytes::from_static(b"a"), None, &m);
        assert!(woken(&h).await, "the first push wakes an idle writer");
        let mut out = VecDeque::new();
        h.take_batch_into(&mut out);
        assert_eq!(out.len(), 1);
        // While the batch is written, more pushes are picked up by the next take.
        h.push_message(Bytes::from_static(b"b"), None, &m);
        assert!(!woken(&h).await, "no wake-up while the writer is writing");
        out.clear();
        h.take_batch_into(&mut out);
        assert_eq!(out.len(), 1);
        // An overflow wakes it mid-write (to stop and send 4101).
        for _ in 0..10 {
            h.push_message(Bytes::from_static(b"c"), None, &m);
        }
        assert!(!woken(&h).await);
        h.push_message(Bytes::from_static(b"d"), None, &m);
        assert!(woken(&h).await, "an overflow wakes a writing writer");
        // Once the writer finds the queue empty, a push wakes it again.
        let h = handle(100, 10);
        h.take_batch_into(&mut VecDeque::new());
        h.push_message(Bytes::from_static(b"e"), None, &m);
        assert!(woken(&h).await);
    }
}
