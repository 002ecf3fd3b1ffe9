//! `[history]`: where a single node keeps channel history (the streams themselves are
//! configured per app, in `[[apps.history]]`).

use std::path::PathBuf;

use herald_cluster::disk::DiskSync;
use herald_core::history::journal::JournalLimits;
use serde::Deserialize;

use super::BrokerKind;

/// The node's history store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// `memory` (lost on restart) or `disk` (survives restarts); with a cluster broker
    /// history lives in Redis and this must stay `memory`.
    pub store: HistoryStoreKind,
    /// The directory of the disk store (created 0700 if missing).
    pub path: PathBuf,
    /// When the disk store fsyncs: on every commit, or never explicitly.
    pub fsync: FsyncPolicy,
    /// Most changes written in one transaction (group commit).
    pub batch: usize,
    /// Changes waiting for the writer before publishers wait.
    pub queue: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            store: HistoryStoreKind::Memory,
            path: PathBuf::from("herald-history"),
            fsync: FsyncPolicy::Always,
            batch: 256,
            queue: 8192,
        }
    }
}

/// The history stores of a single node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStoreKind {
    /// In memory: fastest, lost on restart (clients then get `epoch_changed`).
    Memory,
    /// SQLite in `history.path`: streams, epochs and offsets survive restarts.
    Disk,
}

/// When the disk store fsyncs (see `herald_cluster::disk` and docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before any publication of a commit is delivered: survives power loss.
    Always,
    /// Never explicitly: survives the process being killed, not a power loss.
    Off,
}

impl HistoryConfig {
    /// The disk store's fsync policy.
    pub fn sync(&self) -> DiskSync {
        match self.fsync {
            FsyncPolicy::Always => DiskSync::Always,
            FsyncPolicy::Off => DiskSync::Off,
        }
    }

    /// The journal's queue and batch sizes.
    pub fn limits(&self) -> JournalLimits {
        JournalLimits {
            queue: self.queue,
            batch: self.batch,
        }
    }

    /// What is wrong with this section, given the broker.
    pub(super) fn problems(&self, broker: BrokerKind) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.store == HistoryStoreKind::Disk {
            if broker != BrokerKind::Memory {
                problems.push((
                    "history.store".into(),
                    "\"disk\" is for a single node (broker.kind = \"memory\"); a cluster keeps \
                     history in Redis"
                        .into(),
                ));
            }
            if self.path.as_os_str().is_empty() {
                problems.push(("history.path".into(), "must name a directory".into()));
            }
        }
        if !(1..=10_000).contains(&self.batch) {
            problems.push(("history.batch".into(), "must be 1 to 10000".into()));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            problems.push(("history.queue".into(), "must be 1 to 1000000".into()));
        }
        problems
    }
}
