//! Whole HTTP/1.1 requests through a real server's stack: hyper's parser, Herald's routes,
//! authentication, body reading and the handlers, over an in-memory connection. The client
//! writes the bytes and closes its side; the server must answer or close, and never hang.

use std::sync::OnceLock;
use std::time::Duration;

use herald_server::config::Config;
use herald_server::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// The runtime and the server every input is sent to.
static SERVER: OnceLock<(Runtime, Server)> = OnceLock::new();

fn server() -> &'static (Runtime, Server) {
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = Config::default();
        // Streams that answer late (SSE, long polls) are fuzzed through their decoders
        // instead (`http_session_input`); here every request must end quickly.
        config.sse.enabled = false;
        config.long_poll.enabled = false;
        config.server.max_body_bytes = 64 * 1024;
        config.server.body_timeout = Duration::from_millis(100);
        config.server.handshake_timeout = Duration::from_millis(100);
        let config = config.validate().expect("fuzz server config");
        let server = {
            let _guard = runtime.enter();
            Server::new(config).expect("fuzz server")
        };
        (runtime, server)
    })
}

/// The target.
pub fn run(data: &[u8]) {
    let (runtime, server) = server();
    runtime.block_on(async {
        let (mut client, io) = tokio::io::duplex(256 * 1024);
        let peer = "127.0.0.1:40000".parse().expect("address");
        let serving = tokio::spawn(server.serve_connection(io, peer));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "the server neither answered nor closed");
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(2), serving).await;
        assert!(ended.is_ok(), "the connection outlived its client");
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
                "not an HTTP answer"
            );
        }
    });
}
