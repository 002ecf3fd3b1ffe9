//! A short run of every scenario against a real Herald (and the floor broadcaster), so the
//! tool cannot rot. It checks that every message is delivered, never timings.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

struct Server {
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn herald() -> Server {
    herald_with(|_| {}).await
}

async fn herald_with(adjust: impl FnOnce(&mut herald_server::config::Config)) -> Server {
    let mut config = herald_server::config::Config::default();
    adjust(&mut config);
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.limits.max_connections_per_ip = 0;
    let config = config.validate().unwrap();
    let listeners = herald_server::server::Listeners::bind(&config)
        .await
        .unwrap();
    let (addr, _, admin) = listeners.addrs();
    let server = herald_server::server::Server::new(config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        server.run(listeners, stopped).await.expect("no handover");
    });
    Server {
        addr,
        admin: admin.unwrap(),
        _stop: stop,
    }
}

/// Run `herald-bench <args> --json` and parse its result.
async fn bench(args: Vec<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(&args)
            .arg("--json")
            .output()
            .expect("run herald-bench");
        assert!(
            out.status.success(),
            "herald-bench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON result")
    })
    .await
    .unwrap()
}

fn args(scenario: &str, addr: std::net::SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut v = vec![scenario.to_owned(), "--addr".to_owned(), addr.to_string()];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

fn assert_no_loss(r: &Value) {
    assert_eq!(r["messages_received"], r["messages_expected"], "{r:#}");
    assert!(r["messages_expected"].as_u64().unwrap() > 0, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_delivers_everything() {
    let server = herald().await;
    let status = format!("http://{}/status", server.admin);

    let r = bench(args(
        "idle",
        server.addr,
        &[
            "--connections",
            "300",
            "--channels",
            "10",
            "--settle-secs",
            "0.5",
            "--status-url",
            &status,
        ],
    ))
    .await;
    assert_eq!(r["connected"], 300, "{r:#}");
    assert_no_loss(&r);
    assert!(r["server_bytes_per_connection"].is_number(), "{r:#}");

    let r = bench(args(
        "fanout",
        server.addr,
        &["--subscribers", "300", "--messages", "5", "--rate", "20"],
    ))
    .await;
    assert_no_loss(&r);
    assert_eq!(r["publish_to_last_delivery_ms"]["samples"], 4, "{r:#}");

    // The same fan-out over Herald's HTTP fallbacks.
    for transport in ["sse", "long-poll"] {
        let r = bench(args(
            "fanout",
            server.addr,
            &[
                "--subscribers",
                "100",
                "--messages",
                "5",
                "--rate",
                "20",
                "--transport",
                transport,
            ],
        ))
        .await;
        assert_eq!(r["connected"], 100, "{transport}: {r:#}");
        assert_no_loss(&r);
    }

    let r = bench(args(
        "throughput",
        server.addr,
        &[
            "--connections",
            "200",
            "--channels",
            "4",
            "--per-connection",
            "2",
            "--start-rate",
            "50",
            "--max-steps",
            "2",
            "--step-secs",
            "1",
            "--publishers",
            "4",
        ],
    ))
    .await;
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{r:#}");
    for s in steps {
        assert_eq!(s["lost"], 0, "{r:#}");
        assert_no_loss(s);
    }
    assert!(r["sustained"]["delivered_per_sec"].as_f64().unwrap() > 0.0);

    let r = bench(args(
        "publish-api",
        server.addr,
        &["--concurrency", "4", "--secs", "1", "--subscribers", "3"],
    ))
    .await;
    assert_no_loss(&r);
    assert_eq!(r["publishes_failed"], 0, "{r:#}");

    let r = bench(args(
        "churn",
        server.addr,
        &[
            "--cycles",
            "300",
            "--concurrency",
            "8",
            "--reference-after",
            "100",
            "--status-url",
            &status,
        ],
    ))
    .await;
    assert_eq!(r["cycles_ok"], 300, "{r:#}");
    assert_no_loss(&r);
}

/// A few seconds of the soak: every transport cycles, some HTTP clients abandon their
/// requests, and every count returns to zero once the abandoned sessions time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_cycles_every_transport_and_drains() {
    let server = herald_with(|c| {
        c.long_poll.poll_timeout = Duration::from_secs(1);
        c.long_poll.session_timeout = Duration::from_secs(2);
    })
    .await;
    let admin = server.admin.to_string();
    let r = bench(args(
        "soak",
        server.addr,
        &[
            "--admin",
            &admin,
            "--secs",
            "6",
            "--warmup-secs",
            "2",
            "--sample-secs",
            "1",
            "--clients",
            "30",
            "--channels",
            "4",
            "--publish-rate",
            "50",
            "--presence-share",
            "0.5",
            "--abandon-share",
            "0.5",
            "--min-life-secs",
            "1",
            "--max-life-secs",
            "2",
            "--drain-secs",
            "20",
        ],
    ))
    .await;
    for transport in ["ws", "sse", "long_poll"] {
        assert!(r["cycles"][transport].as_u64().unwrap() > 0, "{r:#}");
    }
    assert!(r["abandoned_mid_request"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["failed_cycles"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["publishes_failed"], 0, "{r:#}");
    assert!(r["messages_received"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["drained_after_secs"].is_number(), "{r:#}");
    assert_eq!(r["after_drain"]["connections"], 0, "{r:#}");
    assert_eq!(r["after_drain"]["http_sessions"], 0, "{r:#}");
    assert_eq!(r["after_drain"]["presence"], 0, "{r:#}");
}

#[tokio::test]
async fn the_floor_broadcaster_delivers_everything() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut floor = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["floor", "--listen", &addr.to_string()])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = bench(args(
        "fanout",
        addr,
        &["--subscribers", "200", "--messages", "4", "--rate", "20"],
    ))
    .await;
    let _ = floor.kill();
    let _ = floor.wait();
    assert_no_loss(&r);
}
