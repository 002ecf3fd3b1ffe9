//! Zero-downtime restart: a running Herald hands its listening sockets to a new process of
//! itself, then drains (docs/operations.md, "Zero-downtime restart").
//!
//! The old process (on SIGUSR2, which `systemctl reload herald` sends) starts the binary it
//! was started as, with the same arguments, and gives it:
//! - its listening sockets, as systemd socket activation would (`LISTEN_FDS`, descriptors
//!   from 3), so the new process finds them exactly as it finds sockets from a `.socket`
//!   unit. The sockets are never closed, so their accept queues live on: a connection that
//!   arrives while neither process accepts waits in the queue and is never refused;
//! - a private channel (a Unix socket pair as its standard input, `HERALD_HANDOVER=1`) on
//!   which the two take turns:
//!
//! ```text
//! new: ready     config valid, about to open the state the old one holds
//! old:           stops accepting, lets in-flight requests finish, closes the disk history
//! old: released
//! new:           opens the history, serves on the inherited sockets, becomes systemd's main PID
//! new: serving
//! old:           asks its clients to reconnect, spread over server.drain_window; exits
//!                when they are gone or at server.shutdown_grace_period
//! ```
//!
//! Until `released`, nothing has changed in the old process: a new process that fails (an
//! invalid configuration, a missing binary, no answer within `server.handover_timeout`) is
//! logged and killed, and the old one keeps serving as if nothing had happened.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Set to `1` in the new process: its standard input is the channel to the old one.
pub const ENV: &str = "HERALD_HANDOVER";

/// The first inherited descriptor (systemd's `SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// Why a handover did not happen, or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The new process could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// What was started.
        program: OsString,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The new process ended, or closed the channel, before saying it was ready.
    #[error("the new process stopped before it was {stage} ({status})")]
    Exited {
        /// The step it did not reach.
        stage: &'static str,
        /// Its exit status, as far as known.
        status: String,
    },
    /// The new process did not answer in time.
    #[error("the new process was not {stage} within {timeout:?}")]
    Timeout {
        /// The step it did not reach.
        stage: &'static str,
        /// How long it had.
        timeout: Duration,
    },
    /// The channel failed.
    #[error("handover channel: {0}")]
    Channel(#[from] std::io::Error),
    /// The peer said something outside the protocol.
    #[error("handover channel: unexpected {0:?}")]
    Protocol(String),
}

/// The line-based channel between the two processes.
struct Channel {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Channel {
    fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
        Self {
            lines: BufReader::new(read).lines(),
            writer,
        }
    }

    async fn say(&mut self, word: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{word}\n").as_bytes()).await
    }

    /// The next line: `Ok(None)` when the peer closed the channel.
    async fn hear(&mut self) -> std::io::Result<Option<String>> {
        self.lines.next_line().await
    }
}

/// The old process's side: the new process it started.
pub struct Successor {
    child: tokio::process::Child,
    channel: Channel,
}

impl std::fmt::Debug for Successor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Successor")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Successor {
    /// Start this binary again with the same arguments, handing it `sockets` (each a
    /// listening socket, duplicated: the caller keeps serving on its own).
    pub fn spawn(sockets: Vec<OwnedFd>) -> Result<Self, HandoverError> {
        let mut args = std::env::args_os();
        // As it was started: after a package upgrade `/proc/self/exe` names the deleted old
        // binary, while the path (or the name looked up in PATH) gives the new one.
        let program = args.next().unwrap_or_else(|| "herald".into());
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let count = sockets.len();
        let mappings = sockets
            .into_iter()
            .zip(FIRST_FD..)
            .map(|(parent_fd, child_fd)| FdMapping {
                parent_fd,
                child_fd,
            })
            .collect();
        let mut command = std::process::Command::new(&program);
        command
            .args(args)
            .env(ENV, "1")
            .env("LISTEN_FDS", count.to_string())
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)));
        command
            .fd_mappings(mappings)
            .map_err(|e| HandoverError::Protocol(e.to_string()))?;
        let mut command = tokio::process::Command::from(command);
        // The new process outlives this one.
        command.kill_on_drop(false);
        let child = command.spawn().map_err(|source| HandoverError::Spawn {
            program: program.clone(),
            source,
        })?;
        ours.set_nonblocking(true)?;
        Ok(Self {
            child,
            channel: Channel::new(UnixStream::from_std(ours)?),
        })
    }

    /// The new process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait until the new process has validated its configuration and needs what this one
    /// holds. On error it is killed.
    pub async fn ready(&mut self, timeout: Duration) -> Result<(), HandoverError> {
        let result = self.expect("ready", timeout).await;
        if result.is_err() {
            let _ = self.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        }
        result
    }

    /// Tell the new process that the listeners and the history are its own now, and wait
    /// until it serves.
    pub async fn release(&mut self, timeout: Duration) -> Result<(), HandoverError> {
        self.channel.say("released").await?;
        self.expect("serving", timeout).await
    }

    async fn expect(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<(), HandoverError> {
        let heard = tokio::time::timeout(timeout, self.channel.hear())
            .await
            .map_err(|_| HandoverError::Timeout { stage, timeout })??;
        match heard {
            Some(word) if word == stage => Ok(()),
            Some(other) => Err(HandoverError::Protocol(other)),
            None => {
                let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
                    .await
                    .map_or_else(
                        |_| "still running".to_owned(),
                        |s| s.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    );
                Err(HandoverError::Exited { stage, status })
            }
        }
    }
}

/// The new process's side: the old process that started it.
pub struct Predecessor {
    channel: Channel,
}

impl std::fmt::Debug for Predecessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predecessor").finish_non_exhaustive()
    }
}

impl Predecessor {
    /// The channel to the old process, when this process was started by a handover.
    /// Must be called inside a tokio runtime.
    pub fn from_env() -> Result<Option<Self>, HandoverError> {
        if std::env::var_os(ENV).as_deref() != Some("1".as_ref()) {
            return Ok(None);
        }
        let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
        let stream = std::os::unix::net::UnixStream::from(stdin);
        stream.set_nonblocking(true)?;
        Ok(Some(Self {
            channel: Channel::new(UnixStream::from_std(stream)?),
        }))
    }

    /// Say that this process is ready to take over, and wait until the old process has
    /// stopped accepting and closed what this one is about to open.
    pub async fn take_over(&mut self, timeout: Duration) -> Result<(), HandoverError> {
        self.channel.say("ready").await?;
        let heard = tokio::time::timeout(timeout, self.channel.hear())
            .await
            .map_err(|_| HandoverError::Timeout {
                stage: "released",
                timeout,
            })??;
        match heard {
            Some(word) if word == "released" => Ok(()),
            Some(other) => Err(HandoverError::Protocol(other)),
            None => Err(HandoverError::Exited {
                stage: "released",
                status: "the old process closed the channel".into(),
            }),
        }
    }

    /// Say that this process serves now; the old one starts its drain.
    pub async fn serving(mut self) -> Result<(), HandoverError> {
        self.channel.say("serving").await?;
        Ok(())
    }
}

/// Listening sockets inherited from systemd socket activation or from a handover, taken
/// from the environment before any thread starts, and matched to the configured listeners
/// by address.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<std::net::TcpListener>,
}

impl Inherited {
    /// Take what `LISTEN_FDS` describes. Call before the runtime starts: it edits the
    /// process environment.
    pub fn from_env() -> Result<Self, String> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::with_capacity(fds.len());
        for i in 0..fds.len() {
            match fds.take_tcp_listener(i) {
                Ok(Some(socket)) => sockets.push(socket),
                Ok(None) => {}
                Err(e) => {
                    return Err(format!(
                        "inherited descriptor {}: {e}",
                        FIRST_FD as usize + i
                    ));
                }
            }
        }
        Ok(Self { sockets })
    }

    /// The inherited socket listening on `addr`, if there is one.
    pub fn take(&mut self, addr: std::net::SocketAddr) -> Option<std::net::TcpListener> {
        let at = self
            .sockets
            .iter()
            .position(|s| s.local_addr().is_ok_and(|a| a == addr))?;
        Some(self.sockets.swap_remove(at))
    }

    /// Addresses of inherited sockets no configured listener took (they are closed).
    pub fn unused(&self) -> Vec<std::net::SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}
