//! Tap: watch a channel's publications without subscribing to it, for the admin views'
//! live tail. A tap is not a connection and not a subscriber: it joins no presence set,
//! changes no subscriber count and sets off no `channel_occupied` webhook. What it needs
//! is that this node receives the channel's publications from the broker, so while a
//! channel is tapped the node stays subscribed to it at the broker even when its last
//! local subscriber leaves ([`Taps::count`] is part of the broker's view of local
//! interest).
//!
//! Bounded: each tap holds at most [`TAP_QUEUE`] publications not yet read; beyond that
//! publications are dropped for that tap (counted in [`Tap::missed`]), never for
//! subscribers. The hot path pays one atomic load per publication while nothing is tapped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use herald_protocol::{ChannelName, ErrorCode};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::warn;

use crate::node::Node;
use crate::publication::Publication;
use crate::refusal::Refusal;

/// Publications one tap may hold unread.
pub const TAP_QUEUE: usize = 256;

/// Taps on one node open at once, over every channel (each holds a queue).
pub const MAX_TAPS: usize = 64;

type TapKey = (Arc<str>, ChannelName);

/// One tap's sending side.
struct TapSender {
    id: u64,
    tx: mpsc::Sender<Arc<Publication>>,
    missed: Arc<AtomicU64>,
}

/// Every tap of a node.
#[derive(Default)]
pub struct Taps {
    /// Taps open; zero makes [`Taps::deliver`] a single load.
    open: AtomicUsize,
    /// Taps by app and channel.
    map: Mutex<HashMap<TapKey, Vec<TapSender>>>,
    /// The next tap id.
    next: AtomicU64,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Taps {
    /// Taps open on `channel` of `app_id`.
    pub fn count(&self, app_id: &str, channel: &ChannelName) -> usize {
        if self.open.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.map
            .lock()
            .get(&(Arc::from(app_id), channel.clone()))
            .map_or(0, Vec::len)
    }

    /// Hand `publication` to the taps on its channel, if any; a full tap misses it.
    pub fn deliver(&self, publication: &Arc<Publication>) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let map = self.map.lock();
        let key = (publication.app_id.clone(), publication.channel.clone());
        for tap in map.get(&key).into_iter().flatten() {
            if tap.tx.try_send(publication.clone()).is_err() {
                tap.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn add(&self, key: TapKey) -> Option<(u64, mpsc::Receiver<Arc<Publication>>, Arc<AtomicU64>)> {
        let mut map = self.map.lock();
        if self.open.load(Ordering::Relaxed) >= MAX_TAPS {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let missed = Arc::new(AtomicU64::new(0));
        map.entry(key).or_default().push(TapSender {
            id,
            tx,
            missed: missed.clone(),
        });
        self.open.fetch_add(1, Ordering::Relaxed);
        Some((id, rx, missed))
    }

    /// Remove tap `id`; whether `key` has no tap left.
    fn remove(&self, key: &TapKey, id: u64) -> bool {
        let mut map = self.map.lock();
        let Some(taps) = map.get_mut(key) else {
            return true;
        };
        if let Some(at) = taps.iter().position(|t| t.id == id) {
            taps.swap_remove(at);
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        if taps.is_empty() {
            map.remove(key);
            return true;
        }
        false
    }
}

/// An open tap: read its publications with [`Tap::next`]; dropping it closes it.
pub struct Tap {
    node: Weak<Node>,
    key: TapKey,
    id: u64,
    rx: mpsc::Receiver<Arc<Publication>>,
    missed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("app", &self.key.0)
            .field("channel", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl Tap {
    /// The next publication on the channel (waiting for it); `None` once the node stopped.
    pub async fn next(&mut self) -> Option<Arc<Publication>> {
        self.rx.recv().await
    }

    /// Publications this tap missed because it was not read fast enough.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        if !node.taps.remove(&self.key, self.id) {
            return;
        }
        // The last tap: leave the broker unless local subscribers still need it.
        let (app_id, channel) = self.key.clone();
        let local = node
            .apps
            .by_id(&app_id)
            .map_or(0, |a| a.hub.subscriber_count(channel.as_str()));
        if local == 0
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if node.taps.count(&app_id, &channel) == 0
                    && let Some(app) = node.apps.by_id(&app_id)
                    && app.hub.subscriber_count(channel.as_str()) == 0
                    && let Err(e) = node.broker.unsubscribe(&app_id, &channel).await
                {
                    warn!(error = %e, channel = %channel, "broker unsubscribe failed");
                }
            });
        }
    }
}

impl Node {
    /// Tap `channel` of `app_id` (see the module docs). Refused for an unknown app, an
    /// invalid channel name, when [`MAX_TAPS`] are open, or when the broker cannot be
    /// subscribed.
    pub async fn tap(self: &Arc<Self>, app_id: &str, channel: &str) -> Result<Tap, Refusal> {
        let Some(app) = self.apps.by_id(app_id).cloned() else {
            return Err(Refusal::new(ErrorCode::UnknownApp, "no such app"));
        };
        let channel = ChannelName::new(channel)
            .map_err(|e| Refusal::new(ErrorCode::InvalidChannel, e.to_string()))?;
        let key = (app.id.clone(), channel.clone());
        let Some((id, rx, missed)) = self.taps.add(key.clone()) else {
            return Err(Refusal::new(
                ErrorCode::Overloaded,
                format!("at most {MAX_TAPS} taps may be open on a node"),
            ));
        };
        let tap = Tap {
            node: Arc::downgrade(self),
            key,
            id,
            rx,
            missed,
        };
        // Subscribing again is harmless when local subscribers already did.
        if let Err(e) = self.broker.subscribe(&app.id, &channel).await {
            warn!(error = %e, channel = %channel, "broker subscribe failed");
            return Err(Refusal::new(
                ErrorCode::Internal,
                "the broker is unavailable; retry later",
            ));
        }
        Ok(tap)
    }
}
