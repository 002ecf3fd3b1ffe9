//! [`Server`]: builds the node from a validated [`Config`] and runs the listeners until a
//! shutdown signal, then drains.
//!
//! Tests and the binary use the same entry point: bind [`Listeners`] (port 0 in tests), build
//! a [`Server`], and `run` it with a shutdown future.
//!
//! # Shutdown sequence
//! 1. The shutdown future completes (SIGTERM/SIGINT in the binary).
//! 2. The listeners stop accepting; `/ready` answers 503.
//! 3. Every realtime connection is asked to flush its queue and close with 1001 ("going away,
//!    reconnect"); idle HTTP keep-alive connections are closed, in-flight requests finish.
//! 4. When every connection has ended, `run` returns. When `shutdown_grace_period` passes
//!    first, every connection still open is closed at once (mid-write or not; its session is
//!    released as on any close), and `run` returns when they are gone (within a few seconds).

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use herald_core::history::memory::MemoryHistory;
use herald_core::node::Backends;
use herald_core::{Metrics, Node};
use herald_protocol::CloseCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::client_ip::IpFilter;
use crate::config::{BrokerKind, Config, HistoryStoreKind, Validated};
use crate::handover::{HandoverError, Inherited, Successor};
use crate::tls::TlsState;
use crate::transport::websocket::WsOptions;

/// What every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// The core.
    pub node: Arc<Node>,
    /// The configuration the server runs with.
    pub config: Arc<Config>,
    /// IP allow/deny lists and trusted proxies.
    pub ip_filter: IpFilter,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when shutdown starts: accept loops stop, HTTP connections wind down.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period is over: HTTP connections still open are
    /// dropped, whatever they are doing.
    pub hard_stop: CancellationToken,
    /// When the server started, for `/status`.
    pub started: tokio::time::Instant,
    /// Sessions of the SSE and long-polling transports.
    pub http_sessions: crate::transport::http_session::HttpSessions,
    /// Reads every request body within its size, time and memory bounds.
    pub bodies: crate::http::BodyReader,
    /// The TLS listener's state (certificate expiry and ACME for `/status`, `/metrics`).
    pub tls: Option<Arc<TlsState>>,
    /// Client requests being handled, so a handover can let them finish before the new
    /// process opens the history they write to.
    pub requests: InFlight,
    /// Connections accepted whose first request has not begun yet: a handover waits for
    /// those requests too (they were accepted here, so they are answered here).
    pub unserved: InFlight,
    /// This node's id in the cluster (random unless `cluster.node_id` is set), for the
    /// admin views.
    pub node_id: Arc<str>,
    /// The apps' connect and subscribe proxies.
    pub app_backends: Arc<crate::app_backend::AppBackends>,
}

/// A count of requests being handled, and a way to wait until there are none.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Requests being handled now.
    count: std::sync::atomic::AtomicUsize,
    /// Woken when the count falls to zero.
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Count a request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlightGuard(self)
    }

    /// Wait until no request is being handled, at most `limit`. Whether none is.
    pub async fn idle(&self, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Counts one request in `Shared::requests` while it lives (owned: it moves into the
/// request's future).
#[derive(Debug)]
pub struct RequestGuard(Arc<Shared>);

impl RequestGuard {
    /// Count a request of `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        shared
            .requests
            .count
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let requests = &self.0.requests;
        if requests
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            requests.idle.notify_waiters();
        }
    }
}

/// Counts one request in [`InFlight`] while it lives.
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    /// Read an HTTP API request's body, within `server.max_body_bytes` and the body bounds.
    pub async fn api_body(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<crate::http::RequestBody, http::Response<crate::http::Body>> {
        self.bodies
            .read(req, self.config.server.max_body_bytes)
            .await
    }

    /// WebSocket transport options from the node limits.
    pub fn ws_options(&self) -> WsOptions {
        WsOptions {
            max_message_size: self.config.limits.max_message_size,
            write_timeout: self.config.limits.write_timeout,
            incomplete_message_timeout: self.config.limits.incomplete_message_timeout,
        }
    }
}

/// How long connections closed at the end of the grace period have to go (their session's
/// release: channels, presence) before `run` returns anyway.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The bound listeners. Binding is separate from running so tests can bind port 0 and read
/// the addresses, and so the binary can report a bind failure before anything starts.
#[derive(Debug)]
pub struct Listeners {
    /// The plain-text client listener.
    pub main: TcpListener,
    /// The TLS client listener, if configured.
    pub tls: Option<TcpListener>,
    /// The admin listener, if enabled.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Bind every configured listener. The error names the config key of the one that failed.
    pub async fn bind(config: &Config) -> Result<Self, String> {
        Self::bind_or_inherit(config, &mut Inherited::default()).await
    }

    /// Take each configured listener from `inherited` (systemd socket activation, or the
    /// process that handed over), matched by address, or bind it.
    pub async fn bind_or_inherit(
        config: &Config,
        inherited: &mut Inherited,
    ) -> Result<Self, String> {
        let backlog = config.server.listen_backlog;
        let mut bind = |key: &'static str, addr: SocketAddr| {
            let listener = match inherited.take(addr) {
                Some(socket) => {
                    info!(key, %addr, "listening on an inherited socket");
                    socket
                        .set_nonblocking(true)
                        .and_then(|()| TcpListener::from_std(socket))
                }
                None => listen(addr, backlog),
            };
            listener.map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))
        };
        Ok(Self {
            main: bind("server.listen", config.server.listen)?,
            tls: match &config.server.tls {
                Some(tls) => Some(bind("server.tls.listen", tls.listen)?),
                None => None,
            },
            admin: if config.admin.enabled {
                Some(bind("admin.listen", config.admin.listen)?)
            } else {
                None
            },
        })
    }

    /// Duplicates of every listening socket, for a process that takes over.
    fn duplicates(&self) -> std::io::Result<Vec<OwnedFd>> {
        std::iter::once(&self.main)
            .chain(&self.tls)
            .chain(&self.admin)
            .map(|l| l.as_fd().try_clone_to_owned())
            .collect()
    }

    /// The bound addresses: (main, tls, admin).
    pub fn addrs(&self) -> (SocketAddr, Option<SocketAddr>, Option<SocketAddr>) {
        let addr = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        (
            addr(&self.main),
            self.tls.as_ref().map(addr),
            self.admin.as_ref().map(addr),
        )
    }
}

/// Bind a listener with `SO_REUSEADDR` (a restart can rebind at once) and `backlog`.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The Redis backends' settings from the `[redis]` and `[cluster]` sections.
fn redis_settings(config: &Validated) -> herald_cluster::redis::RedisSettings {
    herald_cluster::redis::RedisSettings {
        url: config.redis.url.expose().to_owned(),
        ca_pem: config.redis_ca.clone(),
        prefix: config.redis.prefix.clone(),
        heartbeat: config.cluster.heartbeat_interval,
        node_ttl: config.cluster.node_ttl,
        timeout: config.redis.timeout,
    }
}

/// Open `history.store = "disk"`, saying what it found.
fn open_disk_history(config: &Validated) -> Result<Arc<MemoryHistory>, String> {
    use herald_cluster::disk;
    let path = &config.history.path;
    let (history, report) = disk::open_history(
        path,
        config.history.sync(),
        config.history.limits(),
        &disk::boot_id(),
    )
    .map_err(|e| e.to_string())?;
    info!(
        path = %path.display(),
        fsync = ?config.history.fsync,
        streams = report.streams,
        publications = report.publications,
        expired = report.expired,
        "history store opened"
    );
    if report.epochs_renewed {
        warn!(
            "the history store was not closed before the machine restarted (fsync = \"off\"): \
             every stream starts a new epoch, so clients reload instead of recovering"
        );
    } else if report.unclean {
        warn!("the history store was not closed cleanly; everything committed was kept");
    }
    Ok(history)
}

/// The backends `broker.kind` names: memory (with memory or disk history), Redis, or a bus
/// paired with Redis state. Also the durable history, which the server closes when it stops.
fn backends(
    config: &Validated,
    node_id: &Arc<str>,
) -> Result<(Backends, Option<Arc<MemoryHistory>>), String> {
    use herald_cluster::{amqp, nats, postgres, redis::RedisCluster};
    let redis = || RedisCluster::new(redis_settings(config), node_id.clone());
    let mut durable = None;
    let backends = match config.broker.kind {
        BrokerKind::Memory => {
            let dispatchers = match config.broker.dispatchers {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            };
            match config.history.store {
                HistoryStoreKind::Memory => Backends::memory(dispatchers, config.broker.queue),
                HistoryStoreKind::Disk => {
                    let history = open_disk_history(config)?;
                    durable = Some(history.clone());
                    Backends::memory_with_history(dispatchers, config.broker.queue, history)
                }
            }
        }
        BrokerKind::Redis => redis()?.backends(),
        BrokerKind::Nats => {
            let redis = redis()?;
            let settings = nats::NatsSettings {
                url: config.nats.url.expose().to_owned(),
                prefix: config.nats.prefix.clone(),
                timeout: config.nats.timeout,
            };
            let broker = nats::NatsBroker::new(settings, redis.stream_log());
            redis.backends_with(Arc::new(broker))
        }
        BrokerKind::Rabbitmq => {
            let redis = redis()?;
            let settings = amqp::AmqpSettings {
                url: config.rabbitmq.url.expose().to_owned(),
                exchange: config.rabbitmq.exchange.clone(),
                timeout: config.rabbitmq.timeout,
            };
            let broker = amqp::AmqpBroker::new(settings, redis.stream_log());
            redis.backends_with(Arc::new(broker))
        }
        BrokerKind::Postgres => {
            let redis = redis()?;
            let settings = postgres::PostgresSettings {
                url: config.postgres.url.expose().to_owned(),
                prefix: config.postgres.prefix.clone(),
                timeout: config.postgres.timeout,
            };
            let broker = postgres::PostgresBroker::new(settings, redis.stream_log());
            redis.backends_with(Arc::new(broker))
        }
    };
    Ok((backends, durable))
}

/// A built server, ready to run.
#[derive(Debug)]
pub struct Server {
    /// What every connection task shares.
    shared: Arc<Shared>,
    /// The TLS listener's state, when configured.
    tls: Option<Arc<TlsState>>,
    /// Every app's webhook endpoints, parsed by validation, for the sender.
    webhooks: std::collections::HashMap<String, Vec<crate::webhooks::WebhookTarget>>,
    /// The Laravel ingests to start, with their settings resolved by validation.
    ingests: Vec<herald_cluster::ingest::IngestSettings>,
    /// The disk history store, closed (marked clean, WAL folded in) once connections end.
    durable_history: Option<Arc<MemoryHistory>>,
    /// Requests to hand over to a new process (SIGUSR2 in the binary); none in tests that
    /// run the server in-process.
    handover_requests: Option<tokio::sync::mpsc::Receiver<()>>,
}

impl Server {
    /// Build the node and TLS state from a validated configuration, reading no file (the
    /// validation read them). Must be called inside a tokio runtime.
    pub fn new(config: Validated) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new());
        let node_id: Arc<str> = if config.cluster.node_id.is_empty() {
            Arc::from(format!("{:016x}", rand::random::<u64>()))
        } else {
            Arc::from(config.cluster.node_id.as_str())
        };
        let (backends, durable_history) = backends(&config, &node_id)?;
        let node = Node::start(
            config.limits.clone(),
            config.apps.clone(),
            backends,
            metrics,
        )?;
        let tls = match &config.server.tls {
            Some(settings) => Some(TlsState::new(settings, config.tls_key.clone())?),
            None => None,
        };
        let app_backends = Arc::new(crate::app_backend::AppBackends::new(&node)?);
        if app_backends.has_subscribe_proxies() {
            node.set_subscribe_authority(app_backends.clone());
        }
        let ip_filter = IpFilter::new(
            config.server.ip_allow.clone(),
            config.server.ip_deny.clone(),
            config.server.trusted_proxies.clone(),
        );
        let bodies =
            crate::http::BodyReader::new(config.server.body_timeout, config.server.max_body_memory);
        let ingests = ingest_settings(&config, &node_id);
        let webhooks = config.webhooks.clone();
        Ok(Self {
            shared: Arc::new(Shared {
                node,
                config: Arc::new(config.config().clone()),
                ip_filter,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                started: tokio::time::Instant::now(),
                http_sessions: crate::transport::http_session::HttpSessions::new(),
                bodies,
                tls: tls.clone(),
                requests: InFlight::default(),
                unserved: InFlight::default(),
                node_id: node_id.clone(),
                app_backends,
            }),
            tls,
            webhooks,
            ingests,
            durable_history,
            handover_requests: None,
        })
    }

    /// Hand over to a new process of this binary whenever `requests` yields (see
    /// `crate::handover`).
    pub fn with_handover(mut self, requests: tokio::sync::mpsc::Receiver<()>) -> Self {
        self.handover_requests = Some(requests);
        self
    }

    /// Serve one connection that was accepted elsewhere (any byte stream: a Unix socket, an
    /// in-memory pipe) exactly as the plain client listener serves its connections, until
    /// it ends. For embedding and for the fuzzer, which drives the HTTP stack this way.
    pub async fn serve_connection<IO>(&self, io: IO, peer: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        crate::listener::serve_http(io, peer, self.shared.clone()).await;
    }

    /// The core node (for tests and embedding).
    pub fn node(&self) -> &Arc<Node> {
        &self.shared.node
    }

    /// A handle that reloads the TLS certificate (the binary calls it on SIGHUP).
    pub fn tls_reloader(&self) -> Option<Arc<TlsState>> {
        self.tls.clone()
    }

    /// Serve until `shutdown` completes, or until a process started by a handover request
    /// has taken over; then drain (see the module docs). An error means a handover failed
    /// after this process had let go: nothing serves, and the binary exits with a failure
    /// so that the service manager starts Herald again.
    pub async fn run(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), HandoverError> {
        let shared = self.shared.clone();
        let sockets = match self.handover_requests {
            Some(_) => listeners.duplicates().unwrap_or_else(|e| {
                warn!(error = %e, "cannot keep the listening sockets for a handover");
                self.handover_requests = None;
                Vec::new()
            }),
            None => Vec::new(),
        };
        let admin_stop = CancellationToken::new();
        let (loops, admin, ingests) = self.start(listeners, &admin_stop);

        let successor = self.wait_for_stop(shutdown, &sockets).await;
        drop(sockets);

        let grace = shared.config.server.shutdown_grace_period;
        info!(grace = ?grace, "no longer accepting; asking clients to reconnect");
        shared.shutdown.cancel();
        for ingest in ingests {
            ingest.stop().await;
        }
        for l in loops {
            let _ = l.await;
        }
        let drain_started = tokio::time::Instant::now();
        let handed_over = match successor {
            Some(successor) => self.release(successor).await,
            None => Ok(()),
        };
        self.drain(grace.saturating_sub(drain_started.elapsed()))
            .await;
        shared.node.leave_cluster().await;
        if let Some(journal) = self.durable_history.as_ref().and_then(|h| h.journal()) {
            match journal.close().await {
                Ok(()) => info!("history store closed"),
                Err(error) => error!(%error, "history store: closing failed"),
            }
        }
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        handed_over
    }

    /// Start the accept loops, the TLS and ACME watchers, the webhook sender, the admin
    /// listener and the Laravel ingests.
    fn start(
        &mut self,
        listeners: Listeners,
        admin_stop: &CancellationToken,
    ) -> (
        Vec<tokio::task::JoinHandle<()>>,
        Option<tokio::task::JoinHandle<()>>,
        Vec<herald_cluster::ingest::Ingest>,
    ) {
        let shared = &self.shared;
        let mut loops = Vec::new();
        loops.push(tokio::spawn(crate::listener::accept_loop(
            listeners.main,
            shared.clone(),
            None,
        )));
        if let (Some(listener), Some(tls)) = (listeners.tls, self.tls.clone()) {
            loops.push(tokio::spawn(crate::listener::accept_loop(
                listener,
                shared.clone(),
                Some(tls.clone()),
            )));
            let interval = shared
                .config
                .server
                .tls
                .as_ref()
                .map(|t| t.reload_interval)
                .unwrap_or_default();
            tokio::spawn(tls.clone().watch(interval, shared.shutdown.clone()));
            if let Some(acme) = shared
                .config
                .server
                .tls
                .as_ref()
                .and_then(|t| t.acme.clone())
            {
                tokio::spawn(crate::acme::run(tls.clone(), acme, shared.shutdown.clone()));
            }
        }
        if let Some(rx) = shared.node.take_webhook_receiver() {
            tokio::spawn(crate::webhooks::run(
                shared.node.clone(),
                std::mem::take(&mut self.webhooks),
                rx,
                admin_stop.clone(),
            ));
        }
        let admin = listeners
            .admin
            .map(|l| tokio::spawn(crate::admin::serve(l, shared.clone(), admin_stop.clone())));
        tokio::spawn(crate::admin::run_reporter(
            shared.clone(),
            admin_stop.clone(),
        ));
        if let Err(e) = crate::jwks::spawn_fetchers(&shared.node, admin_stop) {
            warn!(error = %e, "JWKS fetchers not started");
        }
        let mut ingests = Vec::new();
        for settings in std::mem::take(&mut self.ingests) {
            let app = settings.app_id.clone();
            match herald_cluster::ingest::Ingest::spawn(shared.node.clone(), settings) {
                Ok(i) => ingests.push(i),
                Err(e) => warn!(error = %e, app = %app, "Laravel ingest not started"),
            }
        }
        (loops, admin, ingests)
    }

    /// Serve until `shutdown` completes (then `None`), or until a new process, started on a
    /// handover request, is ready to take over (then that process). A new process that
    /// fails before it is ready changes nothing here: it is logged and serving goes on.
    async fn wait_for_stop(
        &mut self,
        shutdown: impl Future<Output = ()>,
        sockets: &[OwnedFd],
    ) -> Option<Successor> {
        tokio::pin!(shutdown);
        let Some(mut requests) = self.handover_requests.take() else {
            shutdown.await;
            return None;
        };
        let timeout = self.shared.config.server.handover_timeout;
        loop {
            tokio::select! {
                () = &mut shutdown => return None,
                Some(()) = requests.recv() => {
                    crate::systemd::reloading();
                    let attempt = async {
                        let sockets = sockets
                            .iter()
                            .map(OwnedFd::try_clone)
                            .collect::<std::io::Result<Vec<_>>>()?;
                        let mut successor = Successor::spawn(sockets)?;
                        info!(pid = successor.pid(), "handover: started a new process");
                        successor.ready(timeout).await?;
                        Ok::<_, HandoverError>(successor)
                    };
                    tokio::select! {
                        attempt = attempt => match attempt {
                            Ok(successor) => {
                                info!(pid = successor.pid(), "handover: the new process is ready; handing over");
                                return Some(successor);
                            }
                            Err(error) => {
                                error!(%error, "handover failed; this process keeps serving");
                                crate::systemd::ready();
                            }
                        },
                        () = &mut shutdown => return None,
                    }
                }
            }
        }
    }

    /// Let the new process have the history: wait for the requests in flight (a publish
    /// accepted here is stored before the new process reads the store), close the disk
    /// history, say so, and wait until the new process serves.
    async fn release(&self, mut successor: Successor) -> Result<(), HandoverError> {
        let config = &self.shared.config.server;
        if !self.shared.unserved.idle(config.handshake_timeout).await {
            warn!(
                "handover: connections accepted here sent no request within server.handshake_timeout"
            );
        }
        if !self.shared.requests.idle(config.body_timeout).await {
            warn!(
                "handover: requests still in flight after server.body_timeout; handing over anyway"
            );
        }
        if let Some(journal) = self.durable_history.as_ref().and_then(|h| h.journal()) {
            if let Err(error) = journal.close().await {
                error!(%error, "history store: closing failed");
            }
        }
        match successor.release(config.handover_timeout).await {
            Ok(()) => {
                info!(
                    pid = successor.pid(),
                    "handover: the new process serves; draining"
                );
                Ok(())
            }
            Err(error) => {
                error!(%error, "handover: the new process failed after this one let go; draining and exiting with a failure so that Herald is restarted");
                Err(error)
            }
        }
    }

    /// Ask every connection to reconnect, spread over `server.drain_window`, and wait for
    /// them to end within `grace`; then end whatever is left.
    async fn drain(&self, grace: std::time::Duration) {
        let shared = &self.shared;
        let node = shared.node.clone();
        let window = shared.config.server.drain_window;
        let open = node.connection_count();
        let asking =
            tokio::spawn(async move { node.drain_over(CloseCode::GoingAway, window).await });
        shared.tracker.close();
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            // Whatever is left is stuck (a client that does not read, a request that does
            // not finish): end it now, mid-write or not.
            let remaining = shared.node.abort_all();
            shared.hard_stop.cancel();
            warn!(
                remaining,
                "grace period over; closing the remaining connections"
            );
            if tokio::time::timeout(ABORT_WAIT, shared.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    connections = shared.node.connection_count(),
                    "connections still open after being closed"
                );
            }
        } else {
            info!(closed = open, "all connections closed");
        }
        asking.abort();
    }
}

/// The settings of every `[[laravel_ingest]]`, with the CA validation read.
fn ingest_settings(
    config: &Validated,
    node_id: &Arc<str>,
) -> Vec<herald_cluster::ingest::IngestSettings> {
    config
        .laravel_ingest
        .iter()
        .map(|ingest| {
            let url = ingest.url.as_ref().unwrap_or(&config.redis.url);
            herald_cluster::ingest::IngestSettings {
                url: url.expose().to_owned(),
                ca_pem: config.redis_ca_for(url.expose()),
                app_id: ingest.app.clone(),
                prefix: ingest.prefix.clone(),
                channels: ingest.channels.clone(),
                key_prefix: config.redis.prefix.clone(),
                node_id: node_id.clone(),
            }
        })
        .collect()
}
