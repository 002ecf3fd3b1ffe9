//! The [`PresenceManager`] trait: who is present on each presence channel.
//!
//! Presence is counted per **user**, not per connection: a user with three tabs open is one
//! member. The manager tracks which connections each user has on each channel, so that it
//! can say when a join is a user's first connection (others see `joined`) and when a leave
//! is their last (others see `left`).
//!
//! # Contract
//! - `join` and `leave` are atomic per channel: two concurrent joins of the same user's
//!   connections report exactly one `FirstConnection`; two concurrent last leaves report
//!   exactly one `last_connection`.
//! - `join` enforces the member limit atomically: a new user is refused with `Full` when the
//!   channel already has `max_members` users; another connection of a present user is not.
//! - `members` returns each present user once, with the info of their first connection.
//! - A backend shared by several nodes must expire the entries of a node that dies without
//!   leaving, within a documented time.

pub mod memory;

use async_trait::async_trait;
use herald_protocol::{ChannelName, SocketId};

use crate::publication::Member;

/// The result of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The user's first connection on the channel: announce `joined`.
    FirstConnection,
    /// The user was already present through another connection: announce nothing.
    AnotherConnection,
    /// The channel is full; nothing was recorded.
    Full,
}

/// The result of a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// That was the user's last connection on the channel: announce `left`.
    pub last_connection: bool,
}

/// Why a presence operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("presence backend unavailable: {0}")]
pub struct PresenceError(pub String);

/// Tracks presence members. See the module docs for the contract.
#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    /// Record that connection `socket` of `member` joined `channel`.
    async fn join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: &Member,
        max_members: usize,
    ) -> Result<JoinOutcome, PresenceError>;

    /// Record that connection `socket` of user `user_id` left `channel`.
    async fn leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        user_id: &str,
    ) -> Result<LeaveOutcome, PresenceError>;

    /// The members present on `channel`, each user once, in join order.
    async fn members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, PresenceError>;

    /// The number of users present on `channel`.
    async fn count(&self, app_id: &str, channel: &ChannelName) -> Result<usize, PresenceError>;
}
