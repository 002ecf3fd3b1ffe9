//! [`Backoff`]: reconnect delays, exponential with full jitter, so a cluster whose broker
//! restarts does not reconnect in lockstep.

use std::time::Duration;

/// Reconnect delays: each `next` is a random duration up to a cap that doubles from `min`
/// to `max`; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first cap.
    min: Duration,
    /// The largest cap.
    max: Duration,
    /// The current cap.
    cap: Duration,
}

impl Backoff {
    /// Delays from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, cap: min }
    }

    /// The next delay: uniform in [cap/2, cap] (so never zero), then the cap doubles.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap;
        self.cap = (self.cap * 2).min(self.max);
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Start again from the smallest delay.
    pub fn reset(&mut self) {
        self.cap = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
