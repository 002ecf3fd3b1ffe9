//! The `herald` binary itself: zero-config start, config errors, `token` and `publish`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::json;

use crate::harness::free_port;

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn serve_with_no_config_starts_quickly_and_prints_dev_credentials() {
    let (port, admin) = (free_port(), free_port());
    let started = Instant::now();
    let mut child = herald()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let mut ready_after = None;
    while let Some(Ok(line)) = lines.next() {
        if line.contains("ready in") && ready_after.is_none() {
            ready_after = Some(started.elapsed());
        }
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("secret") {
            break;
        }
    }
    let ready_after = ready_after.expect("a ready line");
    assert!(
        ready_after < Duration::from_secs(1),
        "ready after {ready_after:?}"
    );
    assert!(
        seen.contains(&format!("ws://127.0.0.1:{port}/ws/")),
        "{seen}"
    );
    assert!(
        seen.contains("herald-dev-key") && seen.contains("herald-dev-secret"),
        "{seen}"
    );
    assert!(seen.contains("WARNING"), "{seen}");

    // publish through the running binary with `herald publish`.
    let out = herald()
        .args([
            "publish",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--channel",
            "news",
            "--event",
            "hello",
            "--data",
            r#"{"from":"cli"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["channels"], json!(["news"]));

    // SIGTERM: a graceful, successful exit.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[limits]\nmax_connections = \"many\"\n").unwrap();
    for sub in ["check-config", "serve"] {
        let out = herald()
            .args([sub, "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("limits.max_connections"), "{sub}: {err}");
    }
    let out = herald()
        .args(["serve"])
        .env("HERALD_LIMITS__PING_INTERVAL", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.ping_interval"));
    // A Redis CA file must exist, and needs a TLS URL; the URL's password is never echoed.
    let rejected = |ca_file: &std::path::Path, key: &str| {
        std::fs::write(
            &file,
            format!(
                "[broker]\nkind = \"redis\"\n[redis]\nurl = \"redis://:hunter2-secret@127.0.0.1:6379\"\nca_file = {ca_file:?}\n"
            ),
        )
        .unwrap();
        let out = herald()
            .args(["check-config", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(key), "{err}");
        assert!(!err.contains("hunter2-secret"), "{err}");
        err
    };
    rejected(std::path::Path::new("/nonexistent/ca.pem"), "redis.ca_file");
    std::fs::write(dir.join("ca.pem"), "not a certificate").unwrap();
    let err = rejected(&dir.join("ca.pem"), "redis.ca_file");
    assert!(err.contains("no certificate found"), "{err}");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    let err = rejected(&dir.join("ca.pem"), "redis.url");
    assert!(err.contains("rediss://"), "{err}");
    std::fs::write(
        &file,
        "[[apps]]\nid = \"shop\"\nkey = \"shop-key\"\nsecret = \"long-enough-secret\"\n",
    )
    .unwrap();
    let out = herald()
        .args(["check-config", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("id=shop"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn token_command_mints_a_token_the_server_accepts() {
    let out = herald()
        .args([
            "token",
            "--user",
            "ann",
            "--channel",
            "private-orders.*",
            "--role",
            "admin",
            "--info",
            r#"{"name":"Ann"}"#,
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let app = herald_core::AppSettings::development();
    let verifier = herald_core::auth::TokenVerifier::new(&app.jwt, &app.secret).unwrap();
    let id = verifier.connection(token.trim()).unwrap();
    assert_eq!(id.user_id.as_deref(), Some("ann"));
    assert_eq!(id.roles, vec!["admin"]);
    assert!(id.channels[0].matches("private-orders.7"));
    let out = herald()
        .args(["token", "--info", "{nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// Issue 13, bug 8: validation read the TLS key, then the server read it again after binding.
/// Now the value validation read is the one the server runs with, so a key that can be read
/// only once (a pipe, as `<(vault read …)` or systemd credentials give) works.
#[test]
fn a_tls_key_that_can_be_read_once_is_read_once() {
    let dir = std::env::temp_dir().join(format!("herald-cli-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    let fifo = dir.join("key.pem");
    let _ = std::fs::remove_file(&fifo);
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success(),
        "mkfifo"
    );
    let pem = key.serialize_pem();
    let fifo2 = fifo.clone();
    // Whoever opens the pipe first gets the key; nobody else ever does.
    let writer = std::thread::spawn(move || std::fs::write(fifo2, pem));
    let (port, tls, admin) = (free_port(), free_port(), free_port());
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.tls]\nlisten = \"127.0.0.1:{tls}\"\n\
             cert_file = {:?}\nkey_file = {:?}\nreload_interval = \"0s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            dir.join("cert.pem"),
            fifo
        ),
    )
    .unwrap();
    let mut child = herald()
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ready in") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    let tls_up = ready && std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    writer.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ready, "the server never became ready");
    assert!(tls_up, "the TLS listener is not up");
}

/// Issue 13, bug 8: webhook URLs were checked by prefix only, and one that could not be used
/// silently stopped its sender at run time. Now it is refused before anything starts.
#[test]
fn an_unusable_webhook_url_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("herald-cli-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hook.toml");
    std::fs::write(
        &file,
        "[[apps]]\nid = \"shop\"\nkey = \"shop-key\"\nsecret = \"long-enough-secret\"\n\
         [[apps.webhooks]]\nurl = \"http://\"\n",
    )
    .unwrap();
    let out = herald()
        .args(["check-config", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apps[0].webhooks[0].url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_the_listeners_are_bound_and_stopping_when_the_drain_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify");
    let notify = tokio::net::UnixDatagram::bind(&socket_path).expect("bind NOTIFY_SOCKET");
    let (port, admin) = (free_port(), free_port());
    let mut child = herald()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--log-level", "warn"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut next_message = async || {
        let n = tokio::time::timeout(crate::harness::WAIT * 2, notify.recv(&mut buf))
            .await
            .expect("a notification in time")
            .expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next_message().await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means bound: the first try answers, no retry.
    let (status, _, _) = crate::harness::http(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        "GET",
        "/health",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopping = next_message().await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Kubernetes injects service-link variables (`HERALD_PORT`, `HERALD_SERVICE_HOST`, …) into
/// every pod for a Service named `herald`; they name no configuration key and must not stop
/// Herald. The server starts, says once which it ignored (names, never values), and its log
/// through a pipe carries no colour escape.
#[test]
fn kubernetes_service_links_are_ignored_and_a_piped_log_has_no_colour() {
    let (port, admin) = (free_port(), free_port());
    let mut child = herald()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .env("HERALD_PORT", "tcp://10.0.0.1:6001")
        .env("HERALD_SERVICE_HOST", "10.0.0.1")
        .env("HERALD_SERVICE_PORT", "6001")
        .env("HERALD_PORT_6001_TCP", "tcp://10.0.0.1:6001")
        .env("HERALD_PORT_6001_TCP_PROTO", "tcp")
        .env("HERALD_PORT_6001_TCP_PORT", "6001")
        .env("HERALD_PORT_6001_TCP_ADDR", "10.0.0.1")
        .env("HERALD_BIN", "/secret/path/to/herald")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    while let Some(Ok(line)) = lines.next() {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("herald listening") {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        seen.contains("herald listening"),
        "the server started:\n{seen}"
    );
    let warning = seen
        .lines()
        .find(|l| l.contains("ignoring HERALD_* environment variables"))
        .unwrap_or_else(|| panic!("one warning names them:\n{seen}"));
    for name in [
        "HERALD_BIN",
        "HERALD_PORT",
        "HERALD_SERVICE_HOST",
        "HERALD_PORT_6001_TCP_ADDR",
    ] {
        assert!(warning.contains(name), "{name} in {warning}");
    }
    assert!(
        !warning.contains("10.0.0.1") && !warning.contains("/secret/"),
        "never values: {warning}"
    );
    assert_eq!(
        seen.lines()
            .filter(|l| l.contains("ignoring HERALD_*"))
            .count(),
        1
    );
    assert!(
        !seen.contains('\x1b'),
        "no escape byte in a piped log:\n{seen:?}"
    );
}

/// A variable that looks like a key path (it has `__`) but names no key still fails, as does
/// one that names a key with an invalid value: exit 64, naming the variable.
#[test]
fn a_misspelt_key_path_in_the_environment_still_fails() {
    for (name, value, expect) in [
        ("HERALD_SERVER__LISTN", "0.0.0.0:6001", "listn"),
        (
            "HERALD_SERVER__LISTEN",
            "not-an-address",
            "HERALD_SERVER__LISTEN",
        ),
    ] {
        let out = herald()
            .args(["check-config"])
            .env(name, value)
            .env("HERALD_PORT", "tcp://10.0.0.1:6001")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{name}: {err}");
    }
    let out = herald()
        .args(["check-config"])
        .env("HERALD_PORT", "tcp://10.0.0.1:6001")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ignored") && text.contains("HERALD_PORT"),
        "{text}"
    );
}

/// `log.color`: `always` colours even a pipe; `NO_COLOR` turns `auto` off.
#[test]
fn log_colour_follows_the_setting_and_no_color() {
    let run = |color: &str, no_color: bool| {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = herald();
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .env("HERALD_LOG__COLOR", color)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = String::new();
        while let Some(Ok(line)) = lines.next() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("herald listening") {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        seen
    };
    assert!(
        run("always", false).contains('\x1b'),
        "always colours a pipe"
    );
    assert!(!run("auto", true).contains('\x1b'));
    assert!(!run("never", false).contains('\x1b'));
}

/// The first lines a user sees describe the product, and each subcommand shows an example.
#[test]
fn help_speaks_of_the_product_with_an_example_per_subcommand() {
    let out = herald().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Herald is a realtime event server"),
        "{text}"
    );
    assert!(!text.contains("The herald binary: transports"), "{text}");
    for (sub, example) in [
        ("serve", "herald serve --config /etc/herald/herald.toml"),
        ("check-config", "herald check-config --config"),
        ("token", "herald token --user"),
        ("publish", "herald publish --channel"),
    ] {
        let out = herald().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example:") && text.contains(example),
            "{sub}:\n{text}"
        );
    }
}
