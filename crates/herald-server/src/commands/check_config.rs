//! `herald check-config`: validate the configuration without starting anything.

use std::process::ExitCode;

use crate::cli::{ConfigArgs, load_config};
use crate::config::Overrides;

/// Print a summary of a valid configuration, or every problem (exit 64).
pub fn run(args: &ConfigArgs) -> ExitCode {
    let config = match load_config(args, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("configuration is valid");
    if !config.ignored_env().is_empty() {
        println!(
            "  ignored         {} (environment variables naming no configuration key)",
            config.ignored_env().join(", ")
        );
    }
    println!("  server.listen   {}", config.server.listen);
    if let Some(tls) = &config.server.tls {
        println!(
            "  server.tls      {} ({})",
            tls.listen,
            tls.cert_file.display()
        );
    }
    if config.admin.enabled {
        println!("  admin.listen    {}", config.admin.listen);
    }
    println!("  broker          {:?}", config.broker.kind);
    for app in &config.apps {
        println!(
            "  app             id={} key={} client_events={} require_token={}",
            app.id, app.key, app.client_events, app.require_token
        );
    }
    if config.uses_development_app() {
        println!("  (no apps configured: the development app would be used)");
    }
    ExitCode::SUCCESS
}
