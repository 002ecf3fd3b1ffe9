//! [`MemoryBroker`]: the single-node broker.
//!
//! Publications go into bounded dispatch queues, one per dispatcher task, chosen by a hash
//! of the channel; each dispatcher hands them to the node's handler in order. So:
//! - `publish` returns as soon as the publication is queued: an HTTP publish never waits for
//!   a large fan-out, and when every queue is full it waits for room (backpressure) rather
//!   than buffer without bound;
//! - one channel always maps to the same dispatcher, which keeps per-channel order and never
//!   runs two handler calls for one channel at once;
//! - channels spread over several dispatchers, so large fan-outs use every core.
//!
//! History goes to a [`MemoryHistory`]: the publish reserves room in the dispatch queue
//! first, then appends and enqueues under the stream's lock, so offsets enter the queue in
//! order and nothing waits while holding the lock. A durable history (with a journal) also
//! reserves room in the journal, and dispatches each publication once it is committed.
//!
//! Delivery is exactly once within the process; there is no outage. `subscribe` and
//! `unsubscribe` have nothing to do: every publication reaches the local handler, which
//! ignores channels without subscribers.

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{Broker, BrokerError, BrokerHandler, BrokerHealth, Control, Published};
use crate::history::journal::Journal;
use crate::history::memory::MemoryHistory;
use crate::history::{Appended, HistoryPolicy};
use crate::publication::Publication;

/// One unit of work for a dispatcher.
enum Dispatch {
    Publication(Arc<Publication>),
    Control(Control),
}

/// The in-process broker.
pub struct MemoryBroker {
    /// One sender per dispatcher.
    senders: Vec<mpsc::Sender<Dispatch>>,
    /// The receivers, until `start` moves them into the dispatcher tasks.
    receivers: Mutex<Vec<mpsc::Receiver<Dispatch>>>,
    /// The dispatcher tasks, aborted when the broker is dropped.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Channel streams, appended to as part of a publish.
    history: Arc<MemoryHistory>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("dispatchers", &self.senders.len())
            .finish()
    }
}

impl MemoryBroker {
    /// A broker with `dispatchers` tasks (at least 1), each with a queue of `queue` entries,
    /// keeping channel history in `history`.
    pub fn new(dispatchers: usize, queue: usize, history: Arc<MemoryHistory>) -> Self {
        let (senders, receivers) = (0..dispatchers.max(1))
            .map(|_| mpsc::channel(queue.max(1)))
            .unzip();
        Self {
            senders,
            receivers: Mutex::new(receivers),
            tasks: Mutex::new(Vec::new()),
            history,
        }
    }

    /// A broker with one dispatcher per available core, 4096-entry queues and its own
    /// history store.
    pub fn with_defaults() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores, 4096, Arc::new(MemoryHistory::new()))
    }

    /// A publish to a durable history: room in the dispatch queue and in the journal first,
    /// then the append; the publication is dispatched, and the publish answered, once the
    /// journal has committed it.
    async fn publish_journaled(
        &self,
        publication: Publication,
        policy: &HistoryPolicy,
        journal: &Journal,
    ) -> Result<Published, BrokerError> {
        let sender = self.sender_for(&publication.app_id, &publication.channel);
        let permit = sender
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| BrokerError::Closed)?;
        let slot = journal
            .reserve()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let (committed, wait) = oneshot::channel();
        let appended = self
            .history
            .append_journaled(publication, policy, Some(slot), move |p| {
                permit.send(Dispatch::Publication(p.clone()));
                let _ = committed.send(p);
            });
        match appended {
            Appended::Stored(_) => wait.await.map(Published::Sent).map_err(|_| {
                BrokerError::Unavailable("the history writer stopped before committing".into())
            }),
            Appended::Unchanged(position) => Ok(Published::Unchanged(position)),
        }
    }

    fn sender_for(&self, app_id: &str, channel: &ChannelName) -> &mpsc::Sender<Dispatch> {
        let i = crate::shard::shard_of(
            &[app_id.as_bytes(), channel.as_str().as_bytes()],
            self.senders.len(),
        );
        &self.senders[i]
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        let receivers = std::mem::take(&mut *self.receivers.lock());
        let mut tasks = self.tasks.lock();
        for mut rx in receivers {
            let handler = handler.clone();
            tasks.push(tokio::spawn(async move {
                let mut batch = Vec::with_capacity(64);
                while rx.recv_many(&mut batch, 64).await > 0 {
                    for item in batch.drain(..) {
                        match item {
                            Dispatch::Publication(p) => handler.handle_publication(p),
                            Dispatch::Control(c) => handler.handle_control(c),
                        }
                    }
                }
            }));
        }
        Ok(())
    }

    async fn publish(
        &self,
        publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError> {
        let sender = self.sender_for(&publication.app_id, &publication.channel);
        if let (Some(policy), Some(journal)) = (history, self.history.journal()) {
            return self.publish_journaled(publication, policy, journal).await;
        }
        // Room first: the append below must not wait while it holds the stream's lock.
        let permit = sender.reserve().await.map_err(|_| BrokerError::Closed)?;
        let Some(policy) = history else {
            let publication = Arc::new(publication);
            permit.send(Dispatch::Publication(publication.clone()));
            return Ok(Published::Sent(publication));
        };
        let mut sent = None;
        let appended = self.history.append(publication, policy, |p| {
            permit.send(Dispatch::Publication(p.clone()));
            sent = Some(p);
        });
        match (appended, sent) {
            (Appended::Stored(_), Some(p)) => Ok(Published::Sent(p)),
            (Appended::Unchanged(position), _) => Ok(Published::Unchanged(position)),
            (Appended::Stored(_), None) => Err(BrokerError::Closed),
        }
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        self.senders[0]
            .send(Dispatch::Control(control))
            .await
            .map_err(|_| BrokerError::Closed)
    }

    async fn subscribe(&self, _app_id: &str, _channel: &ChannelName) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _app_id: &str, _channel: &ChannelName) -> Result<(), BrokerError> {
        Ok(())
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth::Healthy
    }
}
