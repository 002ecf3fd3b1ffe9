//! `herald serve`: load and validate the config (exit 64 if invalid), build the server, bind,
//! print where it listens, tell systemd it is ready, run until SIGTERM/SIGINT, drain.

use std::process::ExitCode;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::cli::{ConfigArgs, EXIT_CONFIG, load_config};
use crate::config::{LogFormat, Overrides, Validated};
use crate::server::{Listeners, Server};

/// Run the server.
pub fn run(args: &ConfigArgs, overrides: Overrides) -> ExitCode {
    let started = Instant::now();
    let config = match load_config(args, &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::telemetry::init(&config.log);
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
        // Everything that can fail because of the configuration happens before any port is
        // bound: validation read every file; building the server reads none.
        let server = match Server::new(config.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("config error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let listeners = match Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                error!("{e}");
                eprintln!("herald: {e}");
                return ExitCode::FAILURE;
            }
        };
        announce(&config, &listeners, started);
        tokio::spawn(crate::signals::reload_on_hangup(server.tls_reloader()));
        crate::systemd::ready();
        let shutdown = async {
            crate::signals::shutdown().await;
            crate::systemd::stopping();
        };
        server.run(listeners, shutdown).await;
        info!("stopped");
        ExitCode::SUCCESS
    })
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
