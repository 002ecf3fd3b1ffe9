//! Logging setup: `tracing` with a filter from the config (or `RUST_LOG`), as text or JSON.
//!
//! Nothing the server logs contains a secret or a token: secrets are wrapped in
//! `herald_core::Secret`, whose `Debug` prints `***`, and tokens are never logged.

use tracing_subscriber::EnvFilter;

use crate::config::{LogColor, LogConfig, LogFormat};

/// Whether text logs are coloured: `auto` colours only a terminal, and never when
/// `NO_COLOR` is set to anything (https://no-color.org).
fn colour(setting: LogColor) -> bool {
    match setting {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::IsTerminal::is_terminal(&std::io::stdout())
        }
    }
}

/// Install the global subscriber. Call once, from the binary.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(config.color))
        .with_target(false);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}
