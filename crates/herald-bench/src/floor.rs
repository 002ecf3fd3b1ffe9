//! `herald-bench floor`: a bare WebSocket broadcaster that measures what this machine's
//! kernel allows, the floor every server is compared with.
//!
//! No protocol, no routing, no per-subscriber queue or task: after the upgrade (and a
//! minimal native-protocol greeting and subscribe acknowledgement, so the same load tool can
//! drive it), each connection is handed to one of N partitions (one per core). A publish is
//! any HTTP POST; its body becomes one pre-built text frame, and every partition writes that
//! frame straight to each of its sockets. Frames that queue up while a partition is busy go
//! out together in one vectored write per socket.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_protocol::websocket::{
    Decoder, FrameHeader, Message, OpCode, Role, accept_key, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

/// Run the floor server on `listen` until killed.
pub fn main(listen: SocketAddr) -> std::process::ExitCode {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: cannot listen on {listen}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        eprintln!("floor broadcaster listening on {listen}");
        let (publish, _) = broadcast::channel::<Bytes>(1 << 16);
        let partitions: Vec<mpsc::Sender<TcpStream>> = (0..std::thread::available_parallelism()
            .map_or(2, |n| n.get()))
            .map(|_| {
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(partition(rx, publish.subscribe()));
                tx
            })
            .collect();
        let mut next = 0usize;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (publish, part) = (publish.clone(), partitions[next % partitions.len()].clone());
            next += 1;
            tokio::spawn(async move {
                let _ = connection(stream, publish, part).await;
            });
        }
    })
}

/// One partition: its sockets, and the frames to write to all of them.
async fn partition(mut new: mpsc::Receiver<TcpStream>, mut frames: broadcast::Receiver<Bytes>) {
    let mut sockets: Vec<TcpStream> = Vec::new();
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            Some(s) = new.recv() => sockets.push(s),
            f = frames.recv() => {
                let Ok(f) = f else { continue };
                batch.push(f);
                while let Ok(f) = frames.try_recv() {
                    batch.push(f);
                }
                let mut dead = Vec::new();
                for (i, s) in sockets.iter_mut().enumerate() {
                    if write_all(s, &batch).await.is_err() {
                        dead.push(i);
                    }
                }
                for i in dead.into_iter().rev() {
                    sockets.swap_remove(i);
                }
                batch.clear();
            }
        }
    }
}

/// Write `frames` to `s`: one non-blocking vectored write, awaiting only if the socket is full.
async fn write_all(s: &mut TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = match s.try_write_vectored(slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Serve one TCP connection: a WebSocket upgrade (then hand-off to a partition), or HTTP
/// requests where every POST is a publish.
async fn connection(
    mut stream: TcpStream,
    publish: broadcast::Sender<Bytes>,
    part: mpsc::Sender<TcpStream>,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let _ = buf.split_to(head_end);
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        if let Some(key) = header("sec-websocket-key") {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(&key)
            );
            stream.write_all(response.as_bytes()).await?;
            greet(&mut stream, buf).await?;
            let _ = part.send(stream).await;
            return Ok(());
        }
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf.split_to(length).freeze();
        let reply: &[u8] = if head.starts_with("POST") {
            let mut frame = Vec::with_capacity(body.len() + 10);
            frame.extend_from_slice(FrameHeader::new(OpCode::Text, body.len(), None).as_bytes());
            frame.extend_from_slice(&body);
            let _ = publish.send(Bytes::from(frame));
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n{\"id\":\"floor\",\"channels\":[]}"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        };
        stream.write_all(reply).await?;
    }
}

/// The native-protocol courtesies the load tool waits for: `connected`, and an ack for every
/// subscribe that arrives within a short quiet period.
async fn greet(stream: &mut TcpStream, mut buf: BytesMut) -> io::Result<()> {
    let mut out = Vec::new();
    encode_frame(&mut out, OpCode::Text, br#"{"id":"0","type":"connected","channel":null,"event":null,"data":{"socket_id":"0.0"},"timestamp":0}"#, None);
    stream.write_all(&out).await?;
    let ack = {
        let mut f = Vec::new();
        encode_frame(&mut f, OpCode::Text, br#"{"id":"0","type":"subscribe","channel":null,"event":"subscribed","data":{},"timestamp":0}"#, None);
        f
    };
    let mut decoder = Decoder::new(Role::Server, 1 << 16);
    let mut seen_subscribe = false;
    loop {
        while let Ok(Some(m)) = decoder.decode(&mut buf) {
            if let Message::Text(t) = m
                && t.windows(9).any(|w| w == b"subscribe")
            {
                seen_subscribe = true;
                stream.write_all(&ack).await?;
            }
        }
        let quiet = if seen_subscribe {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(10)
        };
        match tokio::time::timeout(quiet, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => {}
            Err(_) => return Ok(()),
        }
    }
}
