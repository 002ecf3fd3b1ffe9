//! `herald serve`: load and validate the config (exit 64 if invalid), build the server, bind
//! (or take the sockets systemd or the previous process handed over), print where it
//! listens, tell systemd it is ready, run until SIGTERM/SIGINT or until a process started on
//! SIGUSR2 has taken over, drain.

use std::process::ExitCode;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::cli::{ConfigArgs, EXIT_CONFIG, load_config};
use crate::config::{HistoryStoreKind, LogFormat, Overrides, Validated};
use crate::handover::{Inherited, Predecessor};
use crate::server::{Listeners, Server};

/// Run the server.
pub fn run(args: &ConfigArgs, overrides: Overrides) -> ExitCode {
    let started = Instant::now();
    // Before any thread starts: taking inherited sockets edits the environment.
    let mut inherited = match Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match load_config(args, &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::telemetry::init(&config.log);
    if !config.ignored_env().is_empty() {
        warn!(
            variables = %config.ignored_env().join(", "),
            "ignoring HERALD_* environment variables that name no configuration key (a key path has a double underscore: HERALD_SERVER__LISTEN)"
        );
    }
    raise_open_file_limit(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let handover_requests = match crate::signals::handover_requests() {
            Ok(rx) => Some(rx),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGUSR2; zero-downtime restarts are off");
                None
            }
        };
        // Started by a handover: build what this process can while the old one serves,
        // then wait until it has let go (of the disk history, which only one process may
        // hold, and of the listening sockets).
        let predecessor = match Predecessor::from_env() {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "handover: cannot reach the old process");
                return ExitCode::FAILURE;
            }
        };
        let holds_disk_history = config.history.store == HistoryStoreKind::Disk;
        let mut server = None;
        if predecessor.is_none() || !holds_disk_history {
            server = match build(&config) {
                Ok(s) => Some(s),
                Err(code) => return code,
            };
        }
        let predecessor = match predecessor {
            Some(p) => match take_over(p, &config, server.as_ref()).await {
                Ok(p) => Some(p),
                Err(code) => return code,
            },
            None => None,
        };
        let server = match server {
            Some(s) => s,
            None => match build(&config) {
                Ok(s) => s,
                Err(code) => return code,
            },
        };
        let listeners = match Listeners::bind_or_inherit(&config, &mut inherited).await {
            Ok(l) => l,
            Err(e) => {
                error!("{e}");
                eprintln!("herald: {e}");
                return ExitCode::FAILURE;
            }
        };
        for addr in inherited.unused() {
            warn!(%addr, "an inherited socket matches no configured listener; closing it");
        }
        drop(inherited);
        announce(&config, &listeners, started);
        tokio::spawn(crate::signals::reload_on_hangup(server.tls_reloader()));
        let server = match handover_requests {
            Some(rx) => server.with_handover(rx),
            None => server,
        };
        match predecessor {
            Some(predecessor) => {
                if let Err(e) = predecessor.serving().await {
                    warn!(error = %e, "handover: could not tell the old process");
                }
                crate::systemd::took_over();
                info!("handover: took over; serving");
            }
            None => crate::systemd::ready(),
        }
        let shutdown = async {
            crate::signals::shutdown().await;
            crate::systemd::stopping();
        };
        match server.run(listeners, shutdown).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(_) => ExitCode::FAILURE,
        }
    })
}

/// Build the server. Everything that can fail because of the configuration happens before
/// any port is bound: validation read every file; building the server reads none (but the
/// disk history).
fn build(config: &Validated) -> Result<Server, ExitCode> {
    Server::new(config.clone()).map_err(|e| {
        eprintln!("config error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// This process was started by a handover: once `server` (when already built) can take
/// traffic (its broker connected), say it is ready and wait until the old process has
/// stopped accepting and closed the history. The error is the exit code; the old process
/// then keeps serving.
async fn take_over(
    mut predecessor: Predecessor,
    config: &Validated,
    server: Option<&Server>,
) -> Result<Predecessor, ExitCode> {
    let timeout = config.server.handover_timeout;
    if let Some(server) = server {
        let deadline = Instant::now() + timeout;
        while let Err(why) = server.node().is_ready() {
            if Instant::now() >= deadline {
                error!(reason = %why, "handover: not ready within server.handover_timeout");
                return Err(ExitCode::FAILURE);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    info!(pid = std::process::id(), "handover: ready to take over");
    match predecessor.take_over(timeout).await {
        Ok(()) => Ok(predecessor),
        Err(e) => {
            error!(error = %e, "handover: the old process did not let go");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Raise the open-file soft limit to the hard limit (each connection is a descriptor), and
/// warn when even that is below the configured connection limit.
fn raise_open_file_limit(config: &Validated) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let wanted = u64::from(config.limits.max_connections) + 64;
            if limit < wanted {
                warn!(
                    open_files = limit,
                    max_connections = config.limits.max_connections,
                    "the open-file limit is below limits.max_connections; raise it (ulimit -n, LimitNOFILE)"
                );
            } else {
                info!(open_files = limit, "open-file limit");
            }
        }
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// Say where the server listens, and warn loudly about development credentials.
fn announce(config: &Validated, listeners: &Listeners, started: Instant) {
    let (main, tls, admin) = listeners.addrs();
    info!(%main, tls = ?tls, admin = ?admin, broker = ?config.broker.kind, "herald listening");
    if config.log.format == LogFormat::Text {
        println!(
            "herald {} ready in {} ms",
            env!("CARGO_PKG_VERSION"),
            started.elapsed().as_millis()
        );
        println!("  websocket  ws://{main}/ws/{{app_key}}");
        println!("  http api   http://{main}/api/{{app_id}}/publish");
        println!("  pusher     ws://{main}/app/{{app_key}}  http://{main}/apps/{{app_id}}/events");
        if let Some(tls) = tls {
            println!("  tls        wss://{tls}/ws/{{app_key}}  https://{tls}/api/{{app_id}}/…");
            println!("             wss://{tls}/app/{{app_key}}  https://{tls}/apps/{{app_id}}/…");
        }
        if let Some(admin) = admin {
            println!("  admin      {}", crate::admin::describe(admin));
        }
    }
    if config.uses_development_app() {
        let app = &config.apps[0];
        warn!(
            app_id = %app.id,
            app_key = %app.key,
            "no apps configured: running with the PUBLIC DEVELOPMENT credentials; never use them in production"
        );
        if config.log.format == LogFormat::Text {
            println!();
            println!("  WARNING: no apps configured. Running with the DEVELOPMENT app, whose");
            println!("  credentials are public. Never use them in production; configure [[apps]].");
            println!("    app id   {}", app.id);
            println!("    app key  {}", app.key);
            println!("    secret   {}", app.secret.expose());
        }
    }
}
