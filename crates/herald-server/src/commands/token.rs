//! `herald token`: mint a JWT for testing, signed the way the app verifies it.

use std::process::ExitCode;

use herald_core::clock::unix_secs;
use herald_protocol::token::TokenClaims;

use crate::cli::{EXIT_CONFIG, TokenArgs, load_config};
use crate::commands::pick_app;
use crate::config::Overrides;

/// Print a token on stdout.
pub fn run(args: &TokenArgs) -> ExitCode {
    let config = match load_config(&args.config, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match mint(&config, args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald token: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn mint(config: &crate::config::Config, args: &TokenArgs) -> Result<String, String> {
    let app = pick_app(config, args.app.as_deref())?;
    let ttl =
        humantime::parse_duration(&args.ttl).map_err(|e| format!("--ttl {:?}: {e}", args.ttl))?;
    let info = args
        .info
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
        .transpose()
        .map_err(|e| format!("--info is not valid JSON: {e}"))?;
    let now = unix_secs();
    let claims = TokenClaims {
        sub: args.user.clone(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        channels: args.channels.clone(),
        roles: args.roles.clone(),
        permissions: args.permissions.clone(),
        info,
        channel: args.subscription.clone(),
        iss: app.jwt.issuer.clone(),
        aud: app.jwt.audience.clone(),
    };
    let key = args
        .private_key
        .as_ref()
        .map(std::fs::read_to_string)
        .transpose()
        .map_err(|e| format!("--private-key: {e}"))?;
    herald_core::auth::mint_token(app, &claims, key.as_deref())
}
