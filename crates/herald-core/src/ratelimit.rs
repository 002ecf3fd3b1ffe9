//! [`TokenBucket`]: the one rate limiter used for client events, inbound messages and the
//! publish API.

use tokio::time::Instant;

/// A rate: `per_second` sustained, with bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket capacity: how many requests may arrive at once after a quiet period.
    pub burst: f64,
}

impl Rate {
    /// A rate with a burst equal to one second's worth (at least 1).
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(per_second.max(1)),
        }
    }
}

/// A token bucket. Not shared: wrap it in a mutex where several tasks use one bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// The configured rate.
    rate: Rate,
    /// Tokens currently available (fractional).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: rate.burst,
            updated: Instant::now(),
        }
    }

    /// Take one token if available.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// Take one token if available, with `now` supplied by the caller.
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Seconds until the next token is available (0 if one is).
    pub fn retry_after_secs(&self) -> u64 {
        if self.tokens >= 1.0 || self.rate.per_second <= 0.0 {
            return 0;
        }
        ((1.0 - self.tokens) / self.rate.per_second).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_and_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(10));
        let taken = (0..20).filter(|_| b.try_take_at(start)).count();
        assert_eq!(taken, 10);
        assert!(!b.try_take_at(start));
        assert!(b.retry_after_secs() >= 1);
        assert!(b.try_take_at(start + Duration::from_millis(100)));
        assert!(!b.try_take_at(start + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.try_take_at(later)).count(), 10);
    }
}
