//! Fetching the apps' JSON Web Key Sets (`apps.jwt.jwks_url`): once at start, every
//! `jwks_refresh`, and when a token names a `kid` the set does not hold, but never more than
//! once per `jwks_min_interval`, however many unknown `kid`s arrive. A fetch that fails
//! keeps the keys held and is reported in `/status` (`apps[].jwks`) and the log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Node;
use herald_core::auth::KeySet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend_http::{HttpTarget, request};

/// Time a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest key set read.
const MAX_SET: usize = 1024 * 1024;

/// How long a connection whose token names an unknown `kid` waits for a fetch.
pub const KEY_WAIT: Duration = Duration::from_secs(2);

/// Start a fetcher for every app with a key set; they stop with `stop`.
pub fn spawn_fetchers(node: &Node, stop: &CancellationToken) -> Result<(), String> {
    for app in node.apps() {
        let (Some(url), Some(set)) = (&app.settings.jwt.jwks_url, app.verifier.key_set()) else {
            continue;
        };
        let target =
            HttpTarget::parse(url).map_err(|e| format!("apps {}: jwt.jwks_url: {e}", app.id))?;
        let jwt = &app.settings.jwt;
        tokio::spawn(fetch_loop(
            app.id.clone(),
            target,
            set.clone(),
            jwt.jwks_refresh,
            jwt.jwks_min_interval,
            stop.clone(),
        ));
    }
    Ok(())
}

async fn fetch_loop(
    app: Arc<str>,
    target: HttpTarget,
    set: Arc<KeySet>,
    refresh: Duration,
    min_interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let fetched = Instant::now();
        fetch(&app, &target, &set).await;
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            () = set.wanted() => {
                // However many unknown kids arrive, at most one fetch per interval.
                tokio::select! {
                    () = tokio::time::sleep_until(fetched + min_interval) => {}
                    () = stop.cancelled() => return,
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

async fn fetch(app: &str, target: &HttpTarget, set: &KeySet) {
    let now = herald_core::clock::unix_secs();
    let answer = request(
        target,
        http::Method::GET,
        &[("accept", "application/json")],
        Bytes::new(),
        FETCH_TIMEOUT,
        MAX_SET,
    )
    .await;
    let outcome = match answer {
        Ok(a) if a.status == 200 => set.replace(&a.body, now),
        Ok(a) => {
            let why = format!("{} answered {}", target.authority, a.status);
            set.failed(why.clone());
            Err(why)
        }
        Err(e) => {
            let why = format!("{}: {e}", target.authority);
            set.failed(why.clone());
            Err(why)
        }
    };
    match outcome {
        Ok(keys) => info!(app, keys, "JWKS fetched"),
        Err(error) => warn!(app, %error, "JWKS fetch failed; keeping the keys held"),
    }
}
