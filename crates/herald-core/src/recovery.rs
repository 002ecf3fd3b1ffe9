//! Recovery: a subscriber that comes back with its last position gets every publication it
//! missed, in order, exactly once, then the live stream, with no gap and no duplicate at the
//! seam.
//!
//! # The race, and how it is closed
//! A subscriber must be in the hub before history is read, or a publication delivered between
//! the read and the join would be missed. But once it is in the hub, live publications can
//! arrive while history is being read and sent. So a recovering subscriber joins the hub
//! behind a [`Gate`]:
//! 1. the gate starts closed: live publications for this subscriber are buffered (bounded);
//! 2. history is read after the join, so it holds everything delivered before the join;
//! 3. the reply and the replayed publications are queued;
//! 4. [`Gate::open`] queues the buffered publications whose offset is above the last one
//!    replayed (the others were in history already), then lets live publications through,
//!    still dropping any whose offset is not above it: a publication appended before the
//!    read but delivered after the join arrives live as well as from history.
//!
//! Offsets reach every node in order (the broker's contract), so after the first live
//! publication above the seam no later one can be at or below it.
//!
//! If the buffer overflows while closed, publications were lost: the connection is asked to
//! reconnect (4200) and recover again from the position it has, rather than be told a
//! partial replay is complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use herald_protocol::native::StreamPosition;
use parking_lot::Mutex;

use crate::history::HistoryPage;
use crate::metrics::Metrics;
use crate::outbound::SessionHandle;
use crate::publication::{Position, Publication};

/// Holds a recovering subscriber's live publications until its replay has been queued.
#[derive(Debug)]
pub struct Gate {
    /// Set once [`Gate::open`] has run; read without the lock on the fan-out path.
    open: AtomicBool,
    /// Live publications at or below this offset are duplicates of the replay.
    seam: AtomicU64,
    /// Publications buffered while closed, and whether any were dropped for lack of room.
    buffer: Mutex<(Vec<Arc<Publication>>, bool)>,
    /// Most publications buffered while closed.
    capacity: usize,
}

/// What a gate did with a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued for the subscriber now.
    Queued,
    /// Kept until the gate opens.
    Buffered,
    /// Dropped: a duplicate of the replay, or no room while closed.
    Dropped,
}

impl Gate {
    /// A closed gate buffering at most `capacity` publications.
    pub fn new(capacity: usize) -> Self {
        Self {
            open: AtomicBool::new(false),
            seam: AtomicU64::new(0),
            buffer: Mutex::new((Vec::new(), false)),
            capacity,
        }
    }

    /// The fan-out path: deliver, buffer or drop `publication` for `handle`.
    pub fn offer(
        &self,
        publication: &Arc<Publication>,
        handle: &SessionHandle,
        metrics: &Metrics,
    ) -> Offered {
        if !self.open.load(Ordering::Acquire) {
            let mut buffer = self.buffer.lock();
            // Re-checked under the lock: `open` flips while holding it.
            if !self.open.load(Ordering::Acquire) {
                if buffer.0.len() < self.capacity {
                    buffer.0.push(publication.clone());
                    return Offered::Buffered;
                }
                buffer.1 = true;
                return Offered::Dropped;
            }
        }
        if self.is_duplicate(publication) {
            return Offered::Dropped;
        }
        match publication.frame_for(handle) {
            Some(frame) => {
                handle.push_frame(frame, Some(publication.received_at), metrics);
                Offered::Queued
            }
            None => Offered::Dropped,
        }
    }

    fn is_duplicate(&self, publication: &Publication) -> bool {
        publication
            .position
            .as_ref()
            .is_some_and(|p| p.offset <= self.seam.load(Ordering::Acquire))
    }

    /// Queue what was buffered above `seam` (the last offset the subscriber has, replay
    /// included) and let live publications through from now on. Returns `false` if
    /// publications were dropped while closed, in which case nothing is queued and the
    /// connection should be asked to reconnect and recover.
    pub fn open(&self, seam: u64, handle: &SessionHandle, metrics: &Metrics) -> bool {
        let mut buffer = self.buffer.lock();
        self.seam.store(seam, Ordering::Release);
        let (items, overflowed) = std::mem::take(&mut *buffer);
        if !overflowed {
            for p in items.iter().filter(|p| !self.is_duplicate(p)) {
                if let Some(frame) = p.frame_for(handle) {
                    handle.push_frame(frame, Some(p.received_at), metrics);
                }
            }
        }
        self.open.store(true, Ordering::Release);
        !overflowed
    }
}

/// Why a recovery was not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecovered {
    /// The stream the position belongs to is gone (restart, expiry, clear).
    EpochChanged,
    /// Publications after the position have already left history (size or TTL).
    TooOld,
    /// More publications were missed than one recovery may replay.
    TooMany,
    /// The position is ahead of the stream: it never came from this stream.
    Invalid,
}

impl NotRecovered {
    /// The reason as sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::TooOld => "too_old",
            Self::TooMany => "too_many",
            Self::Invalid => "invalid_position",
        }
    }
}

/// The result of a subscribe on a channel with history.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The stream's position at subscribe time: what the client should remember until it
    /// sees newer publications.
    pub position: Position,
    /// `None` when the client did not ask to recover; otherwise whether it got everything.
    pub outcome: Option<Result<(), NotRecovered>>,
    /// The publications to replay, oldest first (empty unless recovered).
    pub replay: Vec<Arc<Publication>>,
}

impl Recovery {
    /// Decide a recovery from `since` (the client's last position, if it sent one), given a
    /// read of the stream after `since.offset` limited to `max + 1` entries.
    pub fn decide(since: Option<&StreamPosition>, page: HistoryPage, max: usize) -> Self {
        let position = page.top.clone();
        let Some(StreamPosition { offset, epoch }) = since else {
            return Self {
                position,
                outcome: None,
                replay: Vec::new(),
            };
        };
        let fail = |why| Self {
            position: page.top.clone(),
            outcome: Some(Err(why)),
            replay: Vec::new(),
        };
        if epoch.as_str() != &*page.top.epoch {
            return fail(NotRecovered::EpochChanged);
        }
        if *offset > page.top.offset {
            return fail(NotRecovered::Invalid);
        }
        if *offset + 1 < page.first_offset {
            return fail(NotRecovered::TooOld);
        }
        if page.truncated || page.publications.len() > max {
            return fail(NotRecovered::TooMany);
        }
        Self {
            position,
            outcome: Some(Ok(())),
            replay: page.publications,
        }
    }

    /// Turn a recovery into `recovered: false` (`too_many`): the replay would not fit the
    /// connection's budget.
    pub fn too_many(&mut self) {
        if self.outcome.is_some() {
            self.outcome = Some(Err(NotRecovered::TooMany));
            self.replay.clear();
        }
    }

    /// The offset of the last publication the client will have once the replay is queued.
    pub fn seam(&self) -> u64 {
        self.replay
            .last()
            .and_then(|p| p.position.as_ref())
            .map_or(self.position.offset, |p| p.offset)
            .max(self.position.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{OutItem, QueueLimits};
    use crate::publication::{EventData, Payload};
    use crate::raw_json::RawJson;
    use crate::wire::Protocol;
    use herald_protocol::{ChannelName, SocketId};
    use std::collections::VecDeque;

    fn publication(offset: u64) -> Arc<Publication> {
        let mut p = Publication::new(
            Arc::from("app"),
            ChannelName::new("feed").unwrap(),
            Arc::from(format!("m{offset}")),
            Payload::Event {
                event: Arc::from("e"),
                data: EventData::Json(RawJson::from_value(&serde_json::json!(offset))),
                user_id: None,
            },
            None,
            0,
        );
        p.position = Some(Position {
            offset,
            epoch: Arc::from("ep"),
        });
        Arc::new(p)
    }

    fn handle() -> SessionHandle {
        SessionHandle::new(
            SocketId::new(1, 1),
            Arc::from("app"),
            Protocol::Native,
            QueueLimits {
                max_bytes: 1 << 20,
                max_items: 1000,
            },
            0,
        )
    }

    fn delivered(h: &SessionHandle) -> Vec<u64> {
        let mut out = VecDeque::new();
        h.take_into(&mut out);
        out.iter()
            .filter_map(|item| match item {
                OutItem::Message { bytes, .. } => {
                    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    v["offset"].as_u64()
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn buffered_publications_above_the_seam_follow_and_duplicates_are_dropped() {
        let (m, h) = (Metrics::new(), handle());
        let gate = Gate::new(10);
        // Live publications 5..=7 arrive while history (up to 6) is being sent.
        for o in 5..=7 {
            assert_eq!(gate.offer(&publication(o), &h, &m), Offered::Buffered);
        }
        assert!(gate.open(6, &h, &m));
        // 6 again (appended before the read, delivered after the join) is a duplicate.
        assert_eq!(gate.offer(&publication(6), &h, &m), Offered::Dropped);
        assert_eq!(gate.offer(&publication(8), &h, &m), Offered::Queued);
        assert_eq!(delivered(&h), vec![7, 8]);
    }

    #[test]
    fn overflow_while_closed_reports_a_failed_recovery() {
        let (m, h) = (Metrics::new(), handle());
        let gate = Gate::new(2);
        for o in 1..=3 {
            gate.offer(&publication(o), &h, &m);
        }
        assert!(!gate.open(0, &h, &m));
        assert!(delivered(&h).is_empty());
    }

    fn page(
        top: u64,
        first: u64,
        offsets: impl Iterator<Item = u64>,
        truncated: bool,
    ) -> HistoryPage {
        HistoryPage {
            publications: offsets.map(publication).collect(),
            top: Position {
                offset: top,
                epoch: Arc::from("ep"),
            },
            first_offset: first,
            truncated,
        }
    }

    #[test]
    fn decisions() {
        let since = |o: u64, e: &str| {
            Some(StreamPosition {
                offset: o,
                epoch: e.to_owned(),
            })
        };
        let r = Recovery::decide(since(3, "ep").as_ref(), page(6, 2, 4..=6, false), 10);
        assert_eq!(r.outcome, Some(Ok(())));
        assert_eq!((r.replay.len(), r.seam()), (3, 6));
        let r = Recovery::decide(since(3, "other").as_ref(), page(6, 2, 4..=6, false), 10);
        assert_eq!(r.outcome, Some(Err(NotRecovered::EpochChanged)));
        let r = Recovery::decide(since(1, "ep").as_ref(), page(6, 4, 4..=6, false), 10);
        assert_eq!(r.outcome, Some(Err(NotRecovered::TooOld)));
        let r = Recovery::decide(since(3, "ep").as_ref(), page(6, 2, 4..=5, true), 2);
        assert_eq!(r.outcome, Some(Err(NotRecovered::TooMany)));
        let r = Recovery::decide(
            since(9, "ep").as_ref(),
            page(6, 2, std::iter::empty(), false),
            10,
        );
        assert_eq!(r.outcome, Some(Err(NotRecovered::Invalid)));
        // Up to date: nothing to replay, recovered.
        let r = Recovery::decide(
            since(6, "ep").as_ref(),
            page(6, 2, std::iter::empty(), false),
            10,
        );
        assert_eq!((r.outcome, r.replay.len(), r.seam()), (Some(Ok(())), 0, 6));
        // Fresh subscribe: only the position.
        let r = Recovery::decide(None, page(6, 2, std::iter::empty(), false), 10);
        assert_eq!((r.outcome, r.seam()), (None, 6));
    }
}
