//! Readiness for systemd (`Type=notify`, `dist/systemd/herald.service`): the unit is started
//! once every listener is bound, and stopping once the drain begins. Outside systemd
//! (`NOTIFY_SOCKET` unset) each call does nothing.

use sd_notify::NotifyState;
use tracing::debug;

/// Every listener is bound and the server takes traffic.
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// The graceful shutdown has begun.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: clients are asked to reconnect"),
    ]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        debug!(%error, "systemd notification not sent");
    }
}
