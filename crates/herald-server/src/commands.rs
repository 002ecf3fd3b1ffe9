//! The implementations of the subcommands.

pub mod check_config;
pub mod publish;
pub mod serve;
pub mod token;

use herald_core::AppSettings;

use crate::config::Config;

/// The app named `id`, or the first app when none is named.
pub fn pick_app<'a>(config: &'a Config, id: Option<&str>) -> Result<&'a AppSettings, String> {
    match id {
        Some(id) => config
            .apps
            .iter()
            .find(|a| a.id == id)
            .ok_or_else(|| format!("no app with id {id:?} in the configuration")),
        None => config
            .apps
            .first()
            .ok_or_else(|| "no apps configured".to_owned()),
    }
}
