//! [`StatsCache`]: history figures reused for a short while, so `/status` and the stats API
//! do not SCAN the keyspace (and ask `MEMORY USAGE` of every stream) on every scrape.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use herald_core::history::HistoryStats;
use parking_lot::Mutex;
use tokio::time::Instant;

/// How long figures are reused before Redis is scanned again.
pub(crate) const STATS_TTL: Duration = Duration::from_secs(10);

/// The last figures per app filter, each reused for `ttl`.
pub(crate) struct StatsCache {
    /// How long figures are reused.
    ttl: Duration,
    /// The last figures per app filter (`None`: all apps), with when they were taken. Only
    /// filters asked for within the last `ttl` are kept (older ones are dropped whenever
    /// figures are stored), so there is at most one entry per app plus the all-apps one.
    entries: Mutex<HashMap<Option<String>, (Instant, HistoryStats)>>,
    /// Held while figures are being taken, so concurrent callers wait for them instead of
    /// scanning too.
    refresh: tokio::sync::Mutex<()>,
}

impl StatsCache {
    /// An empty cache whose figures are reused for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The figures for `app_id` (all apps when `None`): the last ones taken if they are
    /// younger than `ttl`, otherwise fresh ones from `take`. One `take` runs at a time;
    /// callers that arrive meanwhile wait for it and reuse its figures. Errors are not kept.
    pub(crate) async fn get<E, Fut>(
        &self,
        app_id: Option<&str>,
        take: impl FnOnce() -> Fut,
    ) -> Result<HistoryStats, E>
    where
        Fut: Future<Output = Result<HistoryStats, E>>,
    {
        let key = app_id.map(str::to_owned);
        if let Some(stats) = self.fresh(&key) {
            return Ok(stats);
        }
        let _refresh = self.refresh.lock().await;
        if let Some(stats) = self.fresh(&key) {
            return Ok(stats); // taken by the caller we waited for
        }
        let stats = take().await?;
        let now = Instant::now();
        let mut entries = self.entries.lock();
        entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        entries.insert(key, (now, stats));
        Ok(stats)
    }

    fn fresh(&self, key: &Option<String>) -> Option<HistoryStats> {
        let entries = self.entries.lock();
        let (at, stats) = entries.get(key)?;
        (at.elapsed() < self.ttl).then_some(*stats)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A `take` that counts its calls and answers `streams: calls` after `delay`.
    async fn take(calls: &AtomicU64, delay: Duration) -> Result<HistoryStats, String> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(delay).await;
        Ok(HistoryStats {
            streams: n,
            ..HistoryStats::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn figures_are_reused_within_the_ttl_per_filter() {
        let cache = StatsCache::new(STATS_TTL);
        let calls = AtomicU64::new(0);
        for _ in 0..3 {
            let s = cache.get(None, || take(&calls, Duration::ZERO)).await;
            assert_eq!(s.unwrap().streams, 1);
        }
        let app = cache.get(Some("a"), || take(&calls, Duration::ZERO)).await;
        assert_eq!(app.unwrap().streams, 2, "each filter has its own figures");
        tokio::time::advance(STATS_TTL).await;
        let s = cache.get(None, || take(&calls, Duration::ZERO)).await;
        assert_eq!(s.unwrap().streams, 3, "taken again once older than the ttl");
        assert_eq!(cache.entries.lock().len(), 1, "expired filters are dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_refresh_and_errors_are_not_kept() {
        let cache = Arc::new(StatsCache::new(STATS_TTL));
        let calls = Arc::new(AtomicU64::new(0));
        let failed: Result<HistoryStats, String> =
            cache.get(None, || async { Err("down".into()) }).await;
        assert!(failed.is_err());
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    let slow = take(&calls, Duration::from_secs(1));
                    cache.get(None, || slow).await.unwrap().streams
                })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), 1);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one refresh for all callers"
        );
    }
}
