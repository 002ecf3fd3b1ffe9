//! `herald publish`: publish an event through a running server's HTTP API.

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::cli::{EXIT_CONFIG, PublishArgs, load_config};
use crate::commands::pick_app;
use crate::config::Overrides;

/// Publish, print the server's answer, and exit 0 on success (1 on an HTTP error).
pub fn run(args: &PublishArgs) -> ExitCode {
    let config = match load_config(&args.config, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let app = match pick_app(&config, args.app.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("herald publish: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let data: serde_json::Value = match args.data.as_deref().map(serde_json::from_str).transpose() {
        Ok(d) => d.unwrap_or(serde_json::Value::Null),
        Err(e) => {
            eprintln!("herald publish: --data is not valid JSON: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let url = args.url.clone().unwrap_or_else(|| {
        let listen = config.server.listen;
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            listen.ip().to_string()
        };
        format!("http://{host}:{}", listen.port())
    });
    let mut body = json!({"channels": args.channels, "event": args.event, "data": data});
    if let Some(exclude) = &args.exclude {
        body["exclude_socket"] = json!(exclude);
    }
    let secret = args
        .secret
        .clone()
        .unwrap_or_else(|| app.secret.expose().to_owned());
    let path = format!("/api/{}/publish", app.id);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime");
    match runtime.block_on(post_json(&url, &path, &secret, &body)) {
        Ok((status, text)) => {
            println!("{text}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("herald publish: server answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("herald publish: {e}");
            ExitCode::FAILURE
        }
    }
}

/// POST `body` as JSON to `base_url` + `path` with a bearer token (plain HTTP only).
pub async fn post_json(
    base_url: &str,
    path: &str,
    bearer: &str,
    body: &serde_json::Value,
) -> Result<(http::StatusCode, String), String> {
    let authority = base_url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported; use curl for https")?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake failed: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
