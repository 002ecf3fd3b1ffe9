//! [`Commands`]: a session's command handling, run beside its transport's writer.
//!
//! A command can wait on a backend (a subscribe on Redis may take its whole timeout). The
//! transport must keep writing meanwhile, or one slow subscribe stalls every delivery to the
//! connection and can push it into 4101. So a transport never awaits a command inline: it
//! hands the session to [`Commands::run`] and polls [`Commands::finished`] as one more branch
//! of its `select!`, next to its writer. While a command runs, the transport stops reading
//! commands (its input stays bounded), and gets the session back when it completes.
//!
//! The future of a command exists only while one runs (boxed), so an idle connection pays
//! for none of it.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use herald_core::Session;
use herald_protocol::CloseCode;

/// A command in progress: it owns the session and gives it back with its outcome.
type Job = Pin<Box<dyn Future<Output = (Session, Result<(), CloseCode>)> + Send>>;

/// Where the session is.
enum State {
    /// With the transport: no command runs.
    Idle(Session),
    /// Inside a running command.
    Busy(Job),
    /// Moving between the two (never seen outside a method).
    Moving,
}

/// One session's command handling.
pub struct Commands {
    /// Where the session is.
    state: State,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("busy", &self.is_busy())
            .finish()
    }
}

impl Commands {
    /// Handling for `session`, idle.
    pub fn new(session: Session) -> Self {
        Self {
            state: State::Idle(session),
        }
    }

    /// Whether a command is running.
    pub fn is_busy(&self) -> bool {
        matches!(self.state, State::Busy(_))
    }

    /// The session, when no command is running.
    pub fn idle(&mut self) -> Option<&mut Session> {
        match &mut self.state {
            State::Idle(session) => Some(session),
            _ => None,
        }
    }

    /// Handle client messages, in order; each one's replies are queued on the session's
    /// handle. Stops at the first that asks for the connection to close.
    pub fn handle_texts(&mut self, texts: Vec<Bytes>) {
        self.run(|mut session| async move {
            for text in texts {
                if let Err(code) = session.handle_text(&text).await {
                    return (session, Err(code));
                }
            }
            (session, Ok(()))
        });
    }

    /// Run `job` on the session. Must only be called while idle (a transport reads no
    /// further command while one runs); if busy, `job` is dropped unrun.
    pub fn run<F, Fut>(&mut self, job: F)
    where
        F: FnOnce(Session) -> Fut,
        Fut: Future<Output = (Session, Result<(), CloseCode>)> + Send + 'static,
    {
        debug_assert!(!self.is_busy(), "a command is already running");
        match std::mem::replace(&mut self.state, State::Moving) {
            State::Idle(session) => self.state = State::Busy(Box::pin(job(session))),
            other => self.state = other,
        }
    }

    /// Wait for the running command; its outcome (`Err`: close the connection with this
    /// code). Never completes while idle, so it can sit in a `select!` guarded by
    /// [`Commands::is_busy`]. Cancel-safe: dropping this future leaves the command running.
    pub async fn finished(&mut self) -> Result<(), CloseCode> {
        let State::Busy(job) = &mut self.state else {
            return std::future::pending().await;
        };
        let (session, outcome) = job.as_mut().await;
        self.state = State::Idle(session);
        outcome
    }

    /// The session back, once the running command (if any) completes. Commands wait on
    /// backends only with deadlines, so this is bounded.
    pub async fn into_session(mut self) -> Session {
        if self.is_busy() {
            let _ = self.finished().await;
        }
        match self.state {
            State::Idle(session) => session,
            State::Busy(_) | State::Moving => {
                unreachable!("a finished command gives the session back")
            }
        }
    }
}
