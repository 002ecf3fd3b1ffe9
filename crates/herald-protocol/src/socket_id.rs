//! [`SocketId`]: the public identifier of one client connection.
//!
//! It has the Pusher format, two decimal numbers joined by a dot (`\d+\.\d+`), so the same id
//! works for both protocols and for every Pusher server SDK that validates it. The server
//! sends it to the client on connect; a backend passes it back to exclude that connection
//! from a publish, or to send to that one connection.

use std::fmt;
use std::str::FromStr;

/// A connection's public id. Two numbers, each below 10^10, shown as `high.low`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    high: u64,
    low: u64,
}

impl SocketId {
    /// Each half is kept below this so the id fits the widely used `\d{1,10}\.\d{1,10}` form.
    pub const HALF_LIMIT: u64 = 10_000_000_000;

    /// Build an id from two halves, reducing each below [`Self::HALF_LIMIT`].
    pub const fn new(high: u64, low: u64) -> Self {
        Self {
            high: high % Self::HALF_LIMIT,
            low: low % Self::HALF_LIMIT,
        }
    }

    /// The part before the dot.
    pub const fn high(self) -> u64 {
        self.high
    }

    /// The part after the dot.
    pub const fn low(self) -> u64 {
        self.low
    }

    /// Write the decimal form into `out` without allocating a `String`.
    pub fn write_to(self, out: &mut Vec<u8>) {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(self.high).as_bytes());
        out.push(b'.');
        out.extend_from_slice(buf.format(self.low).as_bytes());
    }
}

/// The string is not of the form `digits.digits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSocketId;

impl fmt::Display for InvalidSocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("socket id must look like 1234.5678")
    }
}

impl std::error::Error for InvalidSocketId {}

impl FromStr for SocketId {
    type Err = InvalidSocketId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (high, low) = s.split_once('.').ok_or(InvalidSocketId)?;
        let parse = |part: &str| -> Result<u64, InvalidSocketId> {
            if part.is_empty() || part.len() > 10 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidSocketId);
            }
            part.parse().map_err(|_| InvalidSocketId)
        };
        Ok(Self {
            high: parse(high)?,
            low: parse(low)?,
        })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.high, self.low)
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let id = SocketId::new(123, 456);
        assert_eq!(id.to_string(), "123.456");
        assert_eq!("123.456".parse::<SocketId>(), Ok(id));
        let mut v = Vec::new();
        id.write_to(&mut v);
        assert_eq!(v, b"123.456");
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.2.3",
            "12345678901.1",
            "-1.2",
            "1.2 ",
        ] {
            assert!(bad.parse::<SocketId>().is_err(), "{bad}");
        }
        assert!(SocketId::new(u64::MAX, u64::MAX).high() < SocketId::HALF_LIMIT);
    }
}
