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

/// A handover has begun: the unit shows "reloading" until the new process says it is ready
/// (or this one again, when the handover fails).
pub fn reloading() {
    notify(&[
        NotifyState::Reloading,
        NotifyState::Status("handing over to a new process"),
    ]);
}

/// This process took over from the old one and serves: systemd follows it as the unit's
/// main process from now on (the unit needs `NotifyAccess=all`).
pub fn took_over() {
    notify(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status("serving (took over from the previous process)"),
    ]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        debug!(%error, "systemd notification not sent");
    }
}
