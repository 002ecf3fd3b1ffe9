//! The catalogue of every code Herald puts on the wire.
//!
//! There are two kinds of code, and both live here so that a client author reads one table:
//!
//! - [`ErrorCode`]: carried in the `data.code` of a native `error` message and in the
//!   `error.code` of every HTTP API error body. The connection stays open after an error
//!   message unless a close follows.
//!   - `100–199` request errors: the request was malformed or not applicable.
//!   - `200–299` authentication and authorisation errors.
//!   - `300–399` limits: the request was well formed but over a configured limit.
//! - [`CloseCode`]: the WebSocket close code that ends a connection. Its range tells the
//!   client what to do next ([`Reconnect`]):
//!   - RFC 6455 codes `1000–1015`, with the meaning the RFC gives them.
//!   - `4000–4099` **give up**: reconnecting with the same credentials will fail again.
//!   - `4100–4199` **back off**: reconnect after a delay, with exponential backoff.
//!   - `4200–4299` **reconnect now**: the server asks for an immediate reconnect.
//!
//! The ranges deliberately match the Pusher Channels protocol, so a client that knows one
//! knows the other.

use std::fmt;

/// A numeric error code from the catalogue, with a stable snake_case name.
///
/// The names appear as the `event` of native `error` messages and as `error.name` in HTTP
/// error bodies; clients may branch on either the number or the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 100: an unexpected server-side failure. Retrying later may succeed.
    Internal,
    /// 101: the message is not valid JSON, or not a JSON object.
    InvalidJson,
    /// 102: the message `type` is missing or unknown.
    UnknownType,
    /// 103: the channel name is empty, too long or has characters outside `[-a-zA-Z0-9_=@,.;]`.
    InvalidChannel,
    /// 104: a required field is missing or has the wrong type.
    InvalidRequest,
    /// 105: this connection is already subscribed to the channel.
    AlreadySubscribed,
    /// 106: this connection is not subscribed to the channel.
    NotSubscribed,
    /// 107: client events are disabled for this app, or not allowed on this channel.
    ClientEventsDisabled,
    /// 108: the event name is empty, too long, or (for client events) lacks the `client-` prefix.
    InvalidEventName,
    /// 109: the addressed resource (app, channel, socket, route) does not exist.
    NotFound,
    /// 110: the HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// 111: the request body did not arrive within `server.body_timeout`.
    RequestTimeout,
    /// 200: credentials are required and none were given.
    Unauthorized,
    /// 201: no app has this key or id.
    UnknownApp,
    /// 202: the token has expired (`exp` is in the past).
    TokenExpired,
    /// 203: the token or request signature does not verify.
    BadSignature,
    /// 204: the token is malformed, uses a disallowed algorithm or has invalid claims.
    TokenInvalid,
    /// 205: the token does not allow this channel.
    ChannelNotAllowed,
    /// 206: a channel rule requires a role or permission the token does not carry.
    PermissionDenied,
    /// 207: the request's `Origin` is not in the app's allowed origins.
    OriginNotAllowed,
    /// 208: the app is disabled.
    AppDisabled,
    /// 209: the client's IP address is not allowed.
    IpDenied,
    /// 210: the app's backend (its connect or subscribe proxy) did not answer usably: no
    /// answer in time, an error status, or an answer that is not what the protocol says.
    /// Retry later.
    BackendUnavailable,
    /// 300: the connection has reached its maximum number of subscriptions.
    TooManySubscriptions,
    /// 301: too many requests in too short a time.
    RateLimited,
    /// 302: the payload or message is larger than allowed.
    PayloadTooLarge,
    /// 303: a connection limit (node, app or IP) has been reached.
    TooManyConnections,
    /// 304: a publish names more channels, or a batch holds more events, than allowed.
    TooManyChannels,
    /// 305: the presence channel already has its maximum number of members.
    PresenceFull,
    /// 306: the server is at a capacity limit (the memory for request bodies, say); retry
    /// shortly, as `Retry-After` says.
    Overloaded,
}

impl ErrorCode {
    /// Every code, in catalogue order. Used to render the documentation table and by tests.
    pub const ALL: &'static [ErrorCode] = &[
        Self::Internal,
        Self::InvalidJson,
        Self::UnknownType,
        Self::InvalidChannel,
        Self::InvalidRequest,
        Self::AlreadySubscribed,
        Self::NotSubscribed,
        Self::ClientEventsDisabled,
        Self::InvalidEventName,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Unauthorized,
        Self::UnknownApp,
        Self::TokenExpired,
        Self::BadSignature,
        Self::TokenInvalid,
        Self::ChannelNotAllowed,
        Self::PermissionDenied,
        Self::OriginNotAllowed,
        Self::AppDisabled,
        Self::IpDenied,
        Self::BackendUnavailable,
        Self::TooManySubscriptions,
        Self::RateLimited,
        Self::PayloadTooLarge,
        Self::TooManyConnections,
        Self::TooManyChannels,
        Self::PresenceFull,
        Self::Overloaded,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::Internal => 100,
            Self::InvalidJson => 101,
            Self::UnknownType => 102,
            Self::InvalidChannel => 103,
            Self::InvalidRequest => 104,
            Self::AlreadySubscribed => 105,
            Self::NotSubscribed => 106,
            Self::ClientEventsDisabled => 107,
            Self::InvalidEventName => 108,
            Self::NotFound => 109,
            Self::MethodNotAllowed => 110,
            Self::RequestTimeout => 111,
            Self::Unauthorized => 200,
            Self::UnknownApp => 201,
            Self::TokenExpired => 202,
            Self::BadSignature => 203,
            Self::TokenInvalid => 204,
            Self::ChannelNotAllowed => 205,
            Self::PermissionDenied => 206,
            Self::OriginNotAllowed => 207,
            Self::AppDisabled => 208,
            Self::IpDenied => 209,
            Self::BackendUnavailable => 210,
            Self::TooManySubscriptions => 300,
            Self::RateLimited => 301,
            Self::PayloadTooLarge => 302,
            Self::TooManyConnections => 303,
            Self::TooManyChannels => 304,
            Self::PresenceFull => 305,
            Self::Overloaded => 306,
        }
    }

    /// The stable snake_case name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::InvalidJson => "invalid_json",
            Self::UnknownType => "unknown_type",
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidRequest => "invalid_request",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::ClientEventsDisabled => "client_events_disabled",
            Self::InvalidEventName => "invalid_event_name",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Unauthorized => "unauthorized",
            Self::UnknownApp => "unknown_app",
            Self::TokenExpired => "token_expired",
            Self::BadSignature => "bad_signature",
            Self::TokenInvalid => "token_invalid",
            Self::ChannelNotAllowed => "channel_not_allowed",
            Self::PermissionDenied => "permission_denied",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::AppDisabled => "app_disabled",
            Self::IpDenied => "ip_denied",
            Self::BackendUnavailable => "backend_unavailable",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManyConnections => "too_many_connections",
            Self::TooManyChannels => "too_many_channels",
            Self::PresenceFull => "presence_full",
            Self::Overloaded => "overloaded",
        }
    }

    /// The HTTP status the API answers with when this error ends a request.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Internal => 500,
            Self::InvalidJson
            | Self::UnknownType
            | Self::InvalidChannel
            | Self::InvalidRequest
            | Self::AlreadySubscribed
            | Self::NotSubscribed
            | Self::InvalidEventName
            | Self::TooManyChannels => 400,
            Self::NotFound | Self::UnknownApp => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Overloaded | Self::BackendUnavailable => 503,
            Self::Unauthorized | Self::TokenExpired | Self::BadSignature | Self::TokenInvalid => {
                401
            }
            Self::ChannelNotAllowed
            | Self::PermissionDenied
            | Self::OriginNotAllowed
            | Self::AppDisabled
            | Self::IpDenied
            | Self::ClientEventsDisabled => 403,
            Self::PayloadTooLarge => 413,
            Self::RateLimited
            | Self::TooManySubscriptions
            | Self::TooManyConnections
            | Self::PresenceFull => 429,
        }
    }

    /// A one-line, human-readable description (used when no more specific message exists).
    pub const fn description(self) -> &'static str {
        match self {
            Self::Internal => "internal server error",
            Self::InvalidJson => "message is not a valid JSON object",
            Self::UnknownType => "unknown or missing message type",
            Self::InvalidChannel => "invalid channel name",
            Self::InvalidRequest => "invalid request",
            Self::AlreadySubscribed => "already subscribed to this channel",
            Self::NotSubscribed => "not subscribed to this channel",
            Self::ClientEventsDisabled => "client events are not enabled",
            Self::InvalidEventName => "invalid event name",
            Self::NotFound => "not found",
            Self::MethodNotAllowed => "method not allowed",
            Self::RequestTimeout => "request body not received in time",
            Self::Unauthorized => "credentials required",
            Self::UnknownApp => "unknown app",
            Self::TokenExpired => "token expired",
            Self::BadSignature => "signature does not verify",
            Self::TokenInvalid => "invalid token",
            Self::ChannelNotAllowed => "channel not allowed by token",
            Self::PermissionDenied => "missing role or permission for this channel",
            Self::OriginNotAllowed => "origin not allowed",
            Self::AppDisabled => "app is disabled",
            Self::IpDenied => "client address not allowed",
            Self::BackendUnavailable => "the app's backend did not answer; retry later",
            Self::TooManySubscriptions => "too many subscriptions on this connection",
            Self::RateLimited => "rate limit exceeded",
            Self::PayloadTooLarge => "payload too large",
            Self::TooManyConnections => "connection limit reached",
            Self::TooManyChannels => "too many channels or events in one request",
            Self::PresenceFull => "presence channel is full",
            Self::Overloaded => "server at capacity, retry shortly",
        }
    }

    /// Look a code up by its number.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

/// What a client should do after a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Do not reconnect: the same request will fail again (fix credentials or code first).
    GiveUp,
    /// Reconnect after a delay, growing it exponentially with jitter on repeated failures.
    BackOff,
    /// Reconnect straight away (a small random delay spreads a reconnect storm).
    Immediately,
}

/// A WebSocket close code Herald sends, from the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: a normal close (the client asked for it).
    Normal,
    /// 1001: the server is shutting down or restarting. Reconnect (to another node).
    GoingAway,
    /// 1002: a WebSocket framing violation.
    ProtocolError,
    /// 1003: a binary frame on a text-only protocol.
    UnsupportedData,
    /// 1007: a text frame that is not valid UTF-8.
    InvalidPayload,
    /// 1009: a frame or message larger than the server accepts.
    MessageTooBig,
    /// 1011: an unexpected server failure.
    InternalError,
    /// 1013: the server cannot take the connection now (the app's backend did not answer
    /// the connect proxy). Reconnect after a delay.
    TryAgainLater,
    /// 4001: no app has this key.
    UnknownApp,
    /// 4002: the request is not a valid Herald connection (bad path, protocol or parameters).
    BadRequest,
    /// 4003: the app is disabled.
    AppDisabled,
    /// 4004: the connection token is missing, malformed or its signature does not verify.
    Unauthorized,
    /// 4005: the connection token has expired. Get a fresh token before reconnecting.
    TokenExpired,
    /// 4006: the page's origin is not allowed for this app.
    OriginNotAllowed,
    /// 4008: the server disconnected this client and asks it not to come back.
    Terminated,
    /// 4100: a node or per-IP connection limit is reached.
    OverCapacity,
    /// 4103: the app's own connection limit (`apps.limits.max_connections`) is reached.
    AppOverQuota,
    /// 4101: the client read too slowly and its outbound queue filled up.
    SlowConsumer,
    /// 4102: the client sent too many messages too fast.
    TooManyRequests,
    /// 4200: the server asks the client to reconnect (for example after a forced disconnect).
    Reconnect,
    /// 4201: nothing was received from the client within the activity timeout.
    ActivityTimeout,
    /// 4202: a message the client began was not completed within
    /// `limits.incomplete_message_timeout`.
    IncompleteMessage,
}

impl CloseCode {
    /// Every close code, in catalogue order.
    pub const ALL: &'static [CloseCode] = &[
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::UnsupportedData,
        Self::InvalidPayload,
        Self::MessageTooBig,
        Self::InternalError,
        Self::TryAgainLater,
        Self::UnknownApp,
        Self::BadRequest,
        Self::AppDisabled,
        Self::Unauthorized,
        Self::TokenExpired,
        Self::OriginNotAllowed,
        Self::Terminated,
        Self::OverCapacity,
        Self::AppOverQuota,
        Self::SlowConsumer,
        Self::TooManyRequests,
        Self::Reconnect,
        Self::ActivityTimeout,
        Self::IncompleteMessage,
    ];

    /// The number in the close frame.
    pub const fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::UnsupportedData => 1003,
            Self::InvalidPayload => 1007,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::TryAgainLater => 1013,
            Self::UnknownApp => 4001,
            Self::BadRequest => 4002,
            Self::AppDisabled => 4003,
            Self::Unauthorized => 4004,
            Self::TokenExpired => 4005,
            Self::OriginNotAllowed => 4006,
            Self::Terminated => 4008,
            Self::OverCapacity => 4100,
            Self::AppOverQuota => 4103,
            Self::SlowConsumer => 4101,
            Self::TooManyRequests => 4102,
            Self::Reconnect => 4200,
            Self::ActivityTimeout => 4201,
            Self::IncompleteMessage => 4202,
        }
    }

    /// The reason text put in the close frame (at most 123 bytes, as RFC 6455 requires).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::GoingAway => "server going away, reconnect",
            Self::ProtocolError => "websocket protocol error",
            Self::UnsupportedData => "binary frames are not supported",
            Self::InvalidPayload => "text frame is not valid utf-8",
            Self::MessageTooBig => "message too big",
            Self::InternalError => "internal server error",
            Self::TryAgainLater => "try again later",
            Self::UnknownApp => "unknown app",
            Self::BadRequest => "bad request",
            Self::AppDisabled => "app disabled",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token expired",
            Self::OriginNotAllowed => "origin not allowed",
            Self::Terminated => "disconnected by the server",
            Self::OverCapacity => "over capacity, back off",
            Self::AppOverQuota => "app over connection quota, back off",
            Self::SlowConsumer => "slow consumer",
            Self::TooManyRequests => "too many requests, back off",
            Self::Reconnect => "reconnect requested",
            Self::ActivityTimeout => "activity timeout",
            Self::IncompleteMessage => "message not completed in time",
        }
    }

    /// What a client should do after receiving this code.
    pub const fn reconnect(self) -> Reconnect {
        Self::advice_for(self.code())
    }

    /// The advice for any close code number, including ones not in this catalogue.
    pub const fn advice_for(code: u16) -> Reconnect {
        match code {
            1001 | 1006 | 1012 => Reconnect::Immediately,
            1011 | 1013 | 1014 => Reconnect::BackOff,
            1000..=3999 => Reconnect::GiveUp,
            4000..=4099 => Reconnect::GiveUp,
            4100..=4199 => Reconnect::BackOff,
            4200..=4299 => Reconnect::Immediately,
            _ => Reconnect::BackOff,
        }
    }

    /// Look a close code up by its number.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

/// A code that exists only in the Pusher protocol: sent as the `data.code` of a
/// `pusher:error` message, after which the connection stays open. (Pusher close codes are
/// mapped from [`CloseCode`] by `pusher::close_code`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PusherErrorCode {
    /// 4301: a client event was refused because the connection sent more than the app's
    /// `client_event_rate` per second.
    ClientEventRateLimited,
}

impl PusherErrorCode {
    /// Every Pusher-only code, in catalogue order.
    pub const ALL: &'static [PusherErrorCode] = &[Self::ClientEventRateLimited];

    /// The number in `data.code`.
    pub const fn code(self) -> u16 {
        match self {
            Self::ClientEventRateLimited => 4301,
        }
    }

    /// What it means.
    pub const fn description(self) -> &'static str {
        match self {
            Self::ClientEventRateLimited => "client event rate limit exceeded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn error_codes_are_unique_and_in_their_ranges() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate {}", code.code());
            assert!((100..400).contains(&code.code()));
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
            assert!(!code.name().is_empty());
        }
        let names: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn close_codes_follow_their_range_advice() {
        let mut seen = HashSet::new();
        for code in CloseCode::ALL {
            assert!(seen.insert(code.code()));
            assert!(code.reason().len() <= 123);
            match code.code() {
                4000..=4099 => assert_eq!(code.reconnect(), Reconnect::GiveUp),
                4100..=4199 => assert_eq!(code.reconnect(), Reconnect::BackOff),
                4200..=4299 => assert_eq!(code.reconnect(), Reconnect::Immediately),
                _ => {}
            }
        }
        assert_eq!(CloseCode::GoingAway.reconnect(), Reconnect::Immediately);
        assert_eq!(CloseCode::MessageTooBig.reconnect(), Reconnect::GiveUp);
    }
}
