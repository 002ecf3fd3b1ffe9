//! [`Histogram`]: a log-linear latency histogram in microseconds (64 sub-buckets per power
//! of two, so about 1.6 % precision), mergeable across tasks and processes.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Highest exponent tracked (2^40 µs is about 12 days).
const MAX_EXP: u64 = 40;
/// Number of buckets.
const BUCKETS: usize = ((MAX_EXP - 5) * SUB + SUB) as usize;

/// A latency histogram.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros());
    let exp = exp.min(MAX_EXP);
    let shift = exp - 6;
    let sub = (v >> shift) & (SUB - 1);
    (((exp - 5) * SUB) + sub) as usize
}

fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = i / SUB + 5;
    let sub = i % SUB;
    (SUB + sub) << (exp - 6)
}

impl Histogram {
    /// Record one value (µs).
    pub fn record(&mut self, v: u64) {
        let i = index(v).min(BUCKETS - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Add another histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean value.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), as the lower bound of its bucket.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).min(self.max);
            }
        }
        self.max
    }

    /// A compact, serialisable form.
    pub fn to_sparse(&self) -> SparseHistogram {
        SparseHistogram {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
            sum: self.sum as f64,
        }
    }

    /// Rebuild from the compact form.
    pub fn from_sparse(s: &SparseHistogram) -> Self {
        let mut h = Self::default();
        for (i, c) in &s.buckets {
            if let Some(slot) = h.counts.get_mut(*i as usize) {
                *slot += c;
                h.total += c;
            }
        }
        h.max = s.max;
        h.sum = s.sum as u128;
        h
    }
}

/// The wire form of a histogram: non-empty buckets only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SparseHistogram {
    /// (bucket index, count).
    pub buckets: Vec<(u32, u64)>,
    /// Largest value.
    pub max: u64,
    /// Sum of values.
    pub sum: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000u64), (0.9, 90_000), (0.99, 99_000)] {
            let got = h.quantile(q);
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        let back = Histogram::from_sparse(&h.to_sparse());
        assert_eq!(back.count(), h.count());
        assert_eq!(back.quantile(0.99), h.quantile(0.99));
        assert_eq!(index(63), 63);
        assert!(lower_bound(index(1_000_000)) <= 1_000_000);
    }
}
