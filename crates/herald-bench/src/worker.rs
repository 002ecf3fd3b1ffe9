//! The worker process: opens its share of connections (or runs churn cycles), records every
//! measured delivery, and answers the coordinator's commands.
//!
//! It runs a single-threaded runtime: its connections' tasks share one [`Stats`] without
//! locks, and the coordinator decides how many workers (and so cores) load generation uses.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;
use tokio::task::LocalSet;

use crate::histogram::Histogram;
use crate::httpclient::HttpClient;
use crate::publisher::Publisher;
use crate::target::{Frame, Target, Transport, unix_micros};
use crate::workers::{ChurnSpec, Command, Event, Report, WorkerSpec};
use crate::wsclient::{Received, WsClient};

/// How long each step of a connection's setup may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What this worker has received.
#[derive(Default)]
struct Stats {
    received: u64,
    latency: Histogram,
    last_delivery: Vec<u64>,
    first_receive: u64,
    last_receive: u64,
    connected: usize,
    failed: usize,
    open: usize,
    closed_by_server: usize,
    errors: usize,
    cycles: usize,
    failed_cycles: usize,
    first_error: Option<String>,
    /// When the last connection finished its setup.
    last_setup: Option<tokio::time::Instant>,
    /// Bytes the WebSocket connections read.
    wire_bytes: u64,
}

impl Stats {
    fn record(&mut self, seq: u64, sent: u64, now: u64) {
        self.received += 1;
        self.latency.record(now.saturating_sub(sent));
        if let Some(slot) = self.last_delivery.get_mut(seq as usize) {
            *slot = (*slot).max(now);
        }
        if self.first_receive == 0 {
            self.first_receive = now;
        }
        self.last_receive = self.last_receive.max(now);
    }

    /// A delivery whose markers were not read (a compressed frame not sampled): counted,
    /// with no latency.
    fn count(&mut self, now: u64) {
        self.received += 1;
        if self.first_receive == 0 {
            self.first_receive = now;
        }
        self.last_receive = self.last_receive.max(now);
    }

    fn note_error(&mut self, e: impl std::fmt::Display) {
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn report(&mut self, reset: bool, secs: f64) -> Report {
        let r = Report {
            received: self.received,
            latency: self.latency.to_sparse(),
            last_delivery: self.last_delivery.clone(),
            first_receive: self.first_receive,
            last_receive: self.last_receive,
            open: self.open,
            closed_by_server: self.closed_by_server,
            errors: self.errors,
            cycles: self.cycles,
            failed_cycles: self.failed_cycles,
            secs,
            first_error: self.first_error.clone(),
            wire_bytes: self.wire_bytes,
        };
        if reset {
            self.wire_bytes = 0;
            self.received = 0;
            self.latency = Histogram::default();
            self.last_delivery.iter_mut().for_each(|s| *s = 0);
            self.first_receive = 0;
            self.last_receive = 0;
        }
        r
    }
}

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, event);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Run a worker: read the spec from stdin, work, exit on `exit` or end of input.
pub fn main() -> std::process::ExitCode {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = LocalSet::new();
    local.block_on(&runtime, async {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let Ok(Some(line)) = stdin.next_line().await else {
            emit(&Event::Error {
                message: "no spec on stdin".into(),
            });
            return;
        };
        let spec: WorkerSpec = match serde_json::from_str(&line) {
            Ok(s) => s,
            Err(e) => {
                emit(&Event::Error {
                    message: format!("bad spec: {e}"),
                });
                return;
            }
        };
        let stats = Rc::new(RefCell::new(Stats {
            last_delivery: vec![0; spec.track_messages],
            ..Default::default()
        }));
        let started = tokio::time::Instant::now();
        match &spec.churn {
            Some(churn) => {
                let churn = churn.clone();
                tokio::task::spawn_local(run_churn(spec.clone(), churn, stats.clone()));
            }
            None => open_connections(&spec, &stats),
        }
        while let Ok(Some(line)) = stdin.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(Command::Report { reset }) => {
                    let secs = started.elapsed().as_secs_f64();
                    let r = stats.borrow_mut().report(reset, secs);
                    emit(&Event::Report(r));
                }
                Ok(Command::Exit) | Err(_) => break,
            }
        }
    });
    std::process::ExitCode::SUCCESS
}

/// Open every connection (bounded handshakes in flight), then report `ready`.
fn open_connections(spec: &WorkerSpec, stats: &Rc<RefCell<Stats>>) {
    let gate = Rc::new(Semaphore::new(spec.max_inflight.max(1)));
    let started = tokio::time::Instant::now();
    for n in 0..spec.connections {
        let i = spec.first_index + n;
        // One source address: no bind at all (connect picks ports fast). Several: connection i
        // uses address i mod k and, as its preferred port, i div k.
        let ips = &spec.source_ips;
        let (source, port_hint) = if ips.len() > 1 {
            (Some(ips[i % ips.len()]), (i / ips.len()) as u16)
        } else {
            (None, 0)
        };
        let channels: Vec<String> = spec
            .channels
            .indexes(i)
            .map(|c| spec.channels.name(c))
            .collect();
        let (target, gate, stats) = (spec.target.clone(), gate.clone(), stats.clone());
        tokio::task::spawn_local(async move {
            let permit = gate.acquire().await.expect("semaphore open");
            let setup =
                tokio::time::timeout(SETUP_TIMEOUT, setup(&target, source, port_hint, &channels))
                    .await;
            drop(permit);
            let client = match setup {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let mut s = stats.borrow_mut();
                    s.failed += 1;
                    s.note_error(e);
                    return;
                }
                Err(_) => {
                    let mut s = stats.borrow_mut();
                    s.failed += 1;
                    s.note_error("setup timed out");
                    return;
                }
            };
            {
                let mut s = stats.borrow_mut();
                s.connected += 1;
                s.open += 1;
                s.last_setup = Some(tokio::time::Instant::now());
            }
            receive(client, &target, &stats).await;
        });
    }
    let stats = stats.clone();
    let total = spec.connections;
    tokio::task::spawn_local(async move {
        // Check often (cheap: a borrow) so `ready` goes out as soon as the last connection
        // is up; report progress about four times a second.
        let mut ticks = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ticks += 1;
            let (connected, failed) = {
                let s = stats.borrow();
                (s.connected, s.failed)
            };
            if connected + failed >= total {
                let s = stats.borrow();
                emit(&Event::Ready {
                    connected,
                    failed,
                    secs: s
                        .last_setup
                        .map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64()),
                    first_error: s.first_error.clone(),
                });
                return;
            }
            if ticks % 50 == 0 {
                emit(&Event::Progress { connected, failed });
            }
        }
    });
}

/// A connected, subscribed client on one of the transports.
enum Client {
    Ws(WsClient),
    Http(HttpClient),
}

/// Connect over the target's transport and subscribe to every channel.
async fn setup(
    target: &Target,
    source: Option<std::net::IpAddr>,
    port_hint: u16,
    channels: &[String],
) -> std::io::Result<Client> {
    match target.transport {
        Transport::Ws => Ok(Client::Ws(
            setup_ws(target, source, port_hint, channels).await?,
        )),
        Transport::Sse | Transport::LongPoll => Ok(Client::Http(
            HttpClient::setup(target, source, port_hint, channels).await?,
        )),
    }
}

/// Connect, wait for the greeting, subscribe to every channel and wait for each ack.
async fn setup_ws(
    target: &Target,
    source: Option<std::net::IpAddr>,
    port_hint: u16,
    channels: &[String],
) -> std::io::Result<WsClient> {
    let mut client = WsClient::connect(
        target.addr,
        source,
        port_hint,
        &target.ws_path(),
        target.deflate,
    )
    .await?;
    client.inflate_every(target.inflate_every);
    expect(&mut client, target, Frame::Connected).await?;
    for channel in channels {
        client.send_text(&target.subscribe_message(channel)).await?;
    }
    for _ in channels {
        expect(&mut client, target, Frame::Subscribed).await?;
    }
    Ok(client)
}

/// Read until a frame of `kind` arrives; an error frame or a close fails.
async fn expect(client: &mut WsClient, target: &Target, kind: Frame) -> std::io::Result<()> {
    loop {
        let Some(text) = client.next_text().await? else {
            return Err(std::io::Error::other("closed by the server during setup"));
        };
        match target.classify(&text) {
            k if k == kind => return Ok(()),
            Frame::Error => {
                return Err(std::io::Error::other(format!(
                    "server refused: {}",
                    String::from_utf8_lossy(&text[..text.len().min(200)])
                )));
            }
            Frame::Ping => client.send_text(target.pong_message()).await?,
            _ => {}
        }
    }
}

/// Record deliveries until the connection ends.
async fn receive(client: Client, target: &Target, stats: &Rc<RefCell<Stats>>) {
    match client {
        Client::Ws(ws) => receive_ws(ws, target, stats).await,
        Client::Http(mut http) => {
            let now = unix_micros();
            let mut pong = false;
            for text in http.take_pending() {
                handle_text(target, &text, now, stats, &mut pong);
            }
            loop {
                let mut now = 0;
                let result = http
                    .read_texts(|text| {
                        if now == 0 {
                            now = unix_micros();
                        }
                        handle_text(target, text, now, stats, &mut pong);
                    })
                    .await;
                if let Err(e) = result {
                    let mut s = stats.borrow_mut();
                    s.errors += 1;
                    s.note_error(e);
                    break;
                }
            }
            stats.borrow_mut().open -= 1;
        }
    }
}

async fn receive_ws(mut client: WsClient, target: &Target, stats: &Rc<RefCell<Stats>>) {
    let mut pong = false;
    let now = unix_micros();
    for text in client.take_pending() {
        handle_text(target, &text, now, stats, &mut pong);
    }
    loop {
        if pong {
            pong = false;
            if client.send_text(target.pong_message()).await.is_err() {
                break;
            }
        }
        let mut now = 0;
        let result = client
            .read_texts(|received| {
                if now == 0 {
                    now = unix_micros();
                }
                match received {
                    Received::Text(text) => handle_text(target, text, now, stats, &mut pong),
                    Received::Counted => stats.borrow_mut().count(now),
                }
            })
            .await;
        stats.borrow_mut().wire_bytes += client.take_bytes_read();
        match result {
            Ok(true) => {}
            Ok(false) => {
                stats.borrow_mut().closed_by_server += 1;
                break;
            }
            Err(e) => {
                let mut s = stats.borrow_mut();
                s.errors += 1;
                s.note_error(e);
                break;
            }
        }
    }
    stats.borrow_mut().open -= 1;
}

fn handle_text(
    target: &Target,
    text: &[u8],
    now: u64,
    stats: &Rc<RefCell<Stats>>,
    pong: &mut bool,
) {
    match target.classify(text) {
        Frame::Delivery(seq, sent) => stats.borrow_mut().record(seq, sent, now),
        Frame::Ping => *pong = true,
        _ => {}
    }
}

/// Churn: `concurrency` loops of connect, subscribe, receive one message, disconnect.
async fn run_churn(spec: WorkerSpec, churn: ChurnSpec, stats: Rc<RefCell<Stats>>) {
    let next = Rc::new(RefCell::new(0usize));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..churn.concurrency.max(1) {
        let (spec, churn, stats, next) = (spec.clone(), churn.clone(), stats.clone(), next.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut publisher = None;
            loop {
                let cycle = {
                    let mut n = next.borrow_mut();
                    if *n >= churn.cycles {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let channel = format!("{}{}-{lane}", spec.channels.prefix, spec.id);
                let result = tokio::time::timeout(
                    SETUP_TIMEOUT,
                    one_cycle(
                        &spec.target,
                        &channel,
                        cycle as u64,
                        churn.payload,
                        &mut publisher,
                    ),
                )
                .await;
                let mut s = stats.borrow_mut();
                match result {
                    Ok(Ok(sent)) => {
                        s.cycles += 1;
                        s.record(cycle as u64, sent, unix_micros());
                        if s.cycles % 1000 == 0 {
                            emit(&Event::ChurnProgress { cycles: s.cycles });
                        }
                    }
                    Ok(Err(e)) => {
                        s.failed_cycles += 1;
                        s.note_error(e);
                        publisher = None;
                    }
                    Err(_) => {
                        s.failed_cycles += 1;
                        s.note_error("churn cycle timed out");
                        publisher = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = started;
}

/// One churn cycle; returns the send time of the message received.
async fn one_cycle(
    target: &Target,
    channel: &str,
    seq: u64,
    size: usize,
    publisher: &mut Option<Publisher>,
) -> std::io::Result<u64> {
    // Churn connects without binding: each closed connection (RST, linger 0) frees its port.
    let mut client = setup_ws(target, None, 0, &[channel.to_owned()]).await?;
    if publisher.is_none() {
        *publisher = Some(Publisher::connect(target).await?);
    }
    let data = target.payload(seq, size);
    let status = publisher
        .as_mut()
        .expect("set above")
        .publish(&[channel], "churn", &data)
        .await?;
    if status != 200 {
        return Err(std::io::Error::other(format!("publish answered {status}")));
    }
    loop {
        let Some(text) = client.next_text().await? else {
            return Err(std::io::Error::other("closed before the message arrived"));
        };
        match target.classify(&text) {
            Frame::Delivery(s, sent) if s == seq => return Ok(sent),
            Frame::Ping => client.send_text(target.pong_message()).await?,
            _ => {}
        }
    }
}
