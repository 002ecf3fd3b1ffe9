//! The command line: `herald serve | check-config | token | publish`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::config::{self, ConfigError, Overrides, Validated};

/// Exit status for invalid configuration or usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// What `herald --help` says first: the product, in its own words.
const ABOUT: &str = "Herald is a realtime event server: your backend publishes over HTTP, \
browsers and devices receive in milliseconds over WebSocket (with SSE and long-polling \
fallbacks), on public, private and presence channels. It speaks the Pusher protocol too, so \
Laravel Echo and pusher-js work unchanged.";

const AFTER: &str = "Start with no configuration (a development app, on 127.0.0.1:6001):\n  \
herald serve\n\nDocumentation: README.md and docs/ (configuration.md, operations.md, protocol.md).";

/// Herald: a realtime event server.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about = ABOUT, long_about = None, after_help = AFTER)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(
        after_help = "Example:\n  herald serve --config /etc/herald/herald.toml\n  \
herald serve --listen 0.0.0.0:6001 --admin-listen 127.0.0.1:9601\n\n\
SIGTERM drains and stops; SIGUSR2 (systemctl reload) restarts with no downtime; SIGHUP reloads the TLS certificate."
    )]
    Serve(ServeArgs),
    /// Load and validate the configuration, print a summary, and exit (64 if invalid).
    #[command(after_help = "Example:\n  herald check-config --config /etc/herald/herald.toml")]
    CheckConfig(ConfigArgs),
    /// Mint a connection or subscription token (JWT) for testing.
    #[command(
        after_help = "Example:\n  herald token --user ann --channel 'private-orders.*' --info '{\"name\":\"Ann\"}'"
    )]
    Token(TokenArgs),
    /// Publish an event through a running server's HTTP API.
    #[command(
        after_help = "Example:\n  herald publish --channel news --event article.published --data '{\"title\":\"Hello\"}'"
    )]
    Publish(PublishArgs),
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML config file (also `HERALD_CONFIG`). Without one, defaults and `HERALD_*`
    /// variables apply.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `herald serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Client listener address (server.listen), e.g. 0.0.0.0:6001.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener address (admin.listen).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// TLS listener address (server.tls.listen); needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<String>,
    /// TLS certificate chain, PEM (server.tls.cert_file).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// TLS private key, PEM (server.tls.key_file).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Log filter (log.level), e.g. info or herald_core=debug,info.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format (log.format): text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        let pairs = [
            ("server.listen", &self.listen),
            ("admin.listen", &self.admin_listen),
            ("server.tls.listen", &self.tls_listen),
            ("server.tls.cert_file", &self.tls_cert),
            ("server.tls.key_file", &self.tls_key),
            ("log.level", &self.log_level),
            ("log.format", &self.log_format),
        ];
        for (key, value) in pairs {
            if let Some(v) = value {
                o.set(key, v.as_str());
            }
        }
        o
    }
}

/// `herald token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// App id (default: the only or first app).
    #[arg(long)]
    pub app: Option<String>,
    /// User id (the sub claim).
    #[arg(long)]
    pub user: Option<String>,
    /// Channel pattern the token allows; repeat for several (`*` wildcards).
    #[arg(long = "channel", value_name = "PATTERN")]
    pub channels: Vec<String>,
    /// Role; repeat for several.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Permission; repeat for several.
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Presence info, as JSON.
    #[arg(long, value_name = "JSON")]
    pub info: Option<String>,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Mint a subscription token for exactly this channel instead of a connection token.
    #[arg(long, value_name = "CHANNEL")]
    pub subscription: Option<String>,
    /// Private key PEM for RS256/ES256 apps.
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
}

/// `herald publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Server base URL (default: from server.listen in the configuration).
    #[arg(long)]
    pub url: Option<String>,
    /// App id (default: the only or first app).
    #[arg(long)]
    pub app: Option<String>,
    /// App secret (default: from the configuration).
    #[arg(long)]
    pub secret: Option<String>,
    /// Channel; repeat for several.
    #[arg(long = "channel", required = true)]
    pub channels: Vec<String>,
    /// Event name.
    #[arg(long)]
    pub event: String,
    /// Event data, as JSON (default null).
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Socket id to exclude.
    #[arg(long, value_name = "SOCKET_ID")]
    pub exclude: Option<String>,
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => commands::serve::run(&args.config, args.overrides()),
        Command::CheckConfig(args) => commands::check_config::run(&args),
        Command::Token(args) => commands::token::run(&args),
        Command::Publish(args) => commands::publish::run(&args),
    }
}

/// Load the configuration from the process environment and `args`, printing every problem
/// to stderr on failure.
pub fn load_config(args: &ConfigArgs, overrides: &Overrides) -> Result<Validated, ExitCode> {
    config::load(args.config.as_deref(), std::env::vars(), overrides).map_err(|e: ConfigError| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}
