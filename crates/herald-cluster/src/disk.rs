//! Durable history on one node (`history.store = "disk"`): the core's
//! [`MemoryHistory`](herald_core::history::memory::MemoryHistory) with a
//! [`JournalWriter`] on SQLite.
//!
//! SQLite was chosen by measurement (`bench/history-stores/README.md`): ample group-commit
//! rate, a reload in milliseconds, a file the size of what it holds, and commits that
//! survive the process being killed without an fsync.
//!
//! # What a crash can lose
//! The database runs in WAL mode. Every commit is written to the operating system before
//! any subscriber sees its publications and before the publisher is answered.
//! - `fsync = "always"` (`synchronous = FULL`): each commit is fsynced first. Nothing
//!   acknowledged is lost, whether the process is killed or the machine loses power.
//! - `fsync = "off"` (`synchronous = NORMAL`): commits reach the disk when the kernel writes
//!   them back and at WAL checkpoints. Killing the process (SIGKILL, OOM, a panic) loses
//!   nothing, since the kernel still holds the writes. A power loss or kernel crash may lose
//!   the last commits (the store itself stays consistent). Such a loss could hand out again
//!   offsets that clients already hold, so a store that was not closed cleanly *and* finds
//!   a new boot id (`/proc/sys/kernel/random/boot_id`) gives every stream a new epoch:
//!   clients are told they could not be recovered, never recovered wrongly.
//!
//! # Layout
//! `history.db` in the configured directory (created 0700; the database 0600): `streams`
//! (one row per stream: epoch, newest offset, TTL, last append, dedupe digest), `entries`
//! (one row per stored publication, in the cluster envelope encoding) and `node` (schema
//! version, the clean-close flag and the boot id).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald_core::clock::unix_ms;
use herald_core::history::journal::{
    Journal, JournalLimits, JournalRecord, JournalWriter, RestoredStream,
};
use herald_core::history::memory::MemoryHistory;
use herald_core::publication::Position;
use herald_protocol::ChannelName;
use rusqlite::{Connection, OptionalExtension, params};

use crate::envelope;

/// The database file inside the configured directory.
pub const FILE_NAME: &str = "history.db";

/// The schema this code writes.
const SCHEMA_VERSION: &str = "1";

/// When commits are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSync {
    /// Every commit, before its publications are delivered.
    Always,
    /// Never explicitly: the kernel's write-back and WAL checkpoints.
    Off,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory could not be created or secured.
    #[error("history directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the filesystem said.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("history database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Written by a newer Herald.
    #[error(
        "history database {path} has schema {found}; this Herald reads schema {SCHEMA_VERSION}"
    )]
    Schema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
}

/// What opening the store found, for the startup log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Streams restored.
    pub streams: usize,
    /// Publications restored.
    pub publications: usize,
    /// Streams dropped because they had expired while the node was down.
    pub expired: usize,
    /// The last run did not close the store.
    pub unclean: bool,
    /// Every stream got a new epoch (an unclean close across a reboot with `fsync = "off"`).
    pub epochs_renewed: bool,
}

/// The SQLite side of a durable history.
pub struct DiskJournal {
    /// The open database, used only by the journal's writer thread once started.
    conn: Connection,
}

impl std::fmt::Debug for DiskJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskJournal").finish_non_exhaustive()
    }
}

/// The machine's boot id, which changes on every boot (empty where there is none).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl DiskJournal {
    /// Open (or create) the store in `dir`, load what it holds and mark it in use. `boot_id`
    /// is [`boot_id()`] outside tests.
    pub fn open(
        dir: &Path,
        sync: DiskSync,
        boot_id: &str,
    ) -> Result<(Self, Vec<RestoredStream>, OpenReport), DiskError> {
        secure_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let db = |source| DiskError::Database {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        secure_file(&path).map_err(|source| DiskError::Directory {
            path: path.clone(),
            source,
        })?;
        let synchronous = match sync {
            DiskSync::Always => "FULL",
            DiskSync::Off => "NORMAL",
        };
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        let mut report = OpenReport::default();
        check_schema(&conn, &path)?;
        let clean = node_value(&conn, "clean").map_err(db)?;
        let last_boot = node_value(&conn, "boot_id").map_err(db)?;
        report.unclean = clean.as_deref() == Some("0");
        if report.unclean && sync == DiskSync::Off && last_boot.as_deref() != Some(boot_id) {
            conn.execute(
                "UPDATE streams SET epoch = epoch || lower(hex(randomblob(4)))",
                [],
            )
            .map_err(db)?;
            report.epochs_renewed = true;
        }
        report.expired = drop_expired(&conn, unix_ms()).map_err(db)?;
        let streams = load(&conn).map_err(db)?;
        report.streams = streams.len();
        report.publications = streams.iter().map(|s| s.entries.len()).sum();
        // "In use" must be on disk before anything else is written, or a power loss could
        // leave the previous run's "closed cleanly" in place: fsync this one commit.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let tx = conn.unchecked_transaction().map_err(db)?;
        set_node(&tx, "clean", "0").map_err(db)?;
        set_node(&tx, "boot_id", boot_id).map_err(db)?;
        tx.commit().map_err(db)?;
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(db)?;
        Ok((Self { conn }, streams, report))
    }
}

/// Open the store in `dir` as a running history: the streams it held, and a journal
/// writing every change to it. Close it with the journal's `close` when the node stops.
/// `boot_id` is [`boot_id()`] outside tests.
pub fn open_history(
    dir: &Path,
    sync: DiskSync,
    limits: JournalLimits,
    boot_id: &str,
) -> Result<(Arc<MemoryHistory>, OpenReport), DiskError> {
    let (writer, restored, report) = DiskJournal::open(dir, sync, boot_id)?;
    let journal = Journal::start(Box::new(writer), limits);
    Ok((Arc::new(MemoryHistory::durable(journal, restored)), report))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS node (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    app TEXT NOT NULL,
    channel TEXT NOT NULL,
    epoch TEXT NOT NULL,
    top INTEGER NOT NULL,
    ttl_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    digest BLOB,
    digest_ms INTEGER,
    PRIMARY KEY (app, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    app TEXT NOT NULL,
    channel TEXT NOT NULL,
    offset INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (app, channel, offset)
) WITHOUT ROWID;
INSERT OR IGNORE INTO node (key, value) VALUES ('schema', '1');
";

fn secure_dir(dir: &Path) -> Result<(), DiskError> {
    let err = |source| DiskError::Directory {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// The database is private to Herald's user (SQLite gives its `-wal` and `-shm` files the
/// same mode).
fn secure_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn check_schema(conn: &Connection, path: &Path) -> Result<(), DiskError> {
    let found = node_value(conn, "schema").map_err(|source| DiskError::Database {
        path: path.to_owned(),
        source,
    })?;
    match found {
        Some(v) if v != SCHEMA_VERSION => Err(DiskError::Schema {
            path: path.to_owned(),
            found: v,
        }),
        _ => Ok(()),
    }
}

fn node_value(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM node WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_node(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO node (key, value) VALUES (?1, ?2)",
        [key, value],
    )
    .map(drop)
}

/// Remove streams idle past their TTL and entries older than it. Returns the streams removed.
fn drop_expired(conn: &Connection, now_ms: u64) -> rusqlite::Result<usize> {
    let now = now_ms as i64;
    let tx = conn.unchecked_transaction()?;
    let streams = tx.execute("DELETE FROM streams WHERE last_ms + ttl_ms <= ?1", [now])?;
    tx.execute(
        "DELETE FROM entries WHERE NOT EXISTS (
             SELECT 1 FROM streams s WHERE s.app = entries.app AND s.channel = entries.channel
                 AND entries.at_ms + s.ttl_ms > ?1)",
        [now],
    )?;
    tx.commit()?;
    Ok(streams)
}

/// Every stream with its entries, oldest first. Rows that no longer decode (a channel name
/// this version refuses) are skipped with a warning rather than stopping the node.
fn load(conn: &Connection) -> rusqlite::Result<Vec<RestoredStream>> {
    let mut streams = Vec::new();
    let mut q = conn.prepare(
        "SELECT app, channel, epoch, top, ttl_ms, last_ms, digest, digest_ms FROM streams
         ORDER BY app, channel",
    )?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let (app, channel): (String, String) = (r.get(0)?, r.get(1)?);
        let Ok(channel) = ChannelName::new(&channel) else {
            tracing::warn!(
                app,
                "history store: skipping a stream with an invalid channel name"
            );
            continue;
        };
        let digest: Option<Vec<u8>> = r.get(6)?;
        let digest_ms: Option<i64> = r.get(7)?;
        let last_digest = digest
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .zip(digest_ms.map(|ms| ms as u64));
        streams.push(RestoredStream {
            app_id: Arc::from(app),
            channel,
            epoch: Arc::from(r.get::<_, String>(2)?),
            top: r.get::<_, i64>(3)? as u64,
            ttl: Duration::from_millis(r.get::<_, i64>(4)? as u64),
            last_append_ms: r.get::<_, i64>(5)? as u64,
            last_digest,
            entries: Vec::new(),
        });
    }
    let mut q = conn.prepare(
        "SELECT offset, at_ms, body FROM entries WHERE app = ?1 AND channel = ?2
         ORDER BY offset",
    )?;
    for stream in &mut streams {
        let mut rows = q.query(params![&*stream.app_id, stream.channel.as_str()])?;
        while let Some(r) = rows.next()? {
            let position = Position {
                offset: r.get::<_, i64>(0)? as u64,
                epoch: stream.epoch.clone(),
            };
            let at_ms = r.get::<_, i64>(1)? as u64;
            let body: Vec<u8> = r.get(2)?;
            match envelope::decode_publication(&body, Some(position)) {
                Ok(p) => stream.entries.push((p, at_ms)),
                Err(error) => {
                    tracing::warn!(%error, "history store: skipping an entry that does not decode")
                }
            }
        }
    }
    Ok(streams)
}

/// A stream's newest state within one batch: written once per stream per commit, however
/// many of the batch's appends it had.
struct Head<'a> {
    epoch: &'a str,
    top: u64,
    ttl_ms: i64,
    at_ms: u64,
    digest: Option<&'a [u8; 32]>,
    keep_from: u64,
}

type StreamKey<'a> = (&'a str, &'a str);

impl DiskJournal {
    /// One transaction for the batch: every kept entry inserted, then each touched stream's
    /// head written and its window trimmed once (a batch of 256 appends to one channel is
    /// 256 inserts, one upsert and one delete). A creation or removal first writes out the
    /// pending head of its stream, so the batch's order is kept per stream.
    fn write(&mut self, records: &[JournalRecord]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put_entry = tx.prepare_cached(
                "INSERT OR REPLACE INTO entries (app, channel, offset, at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut drop_entries =
                tx.prepare_cached("DELETE FROM entries WHERE app = ?1 AND channel = ?2")?;
            let mut drop_stream =
                tx.prepare_cached("DELETE FROM streams WHERE app = ?1 AND channel = ?2")?;
            let mut heads: HashMap<StreamKey<'_>, Head<'_>> = HashMap::new();
            for record in records {
                match record {
                    JournalRecord::Appended {
                        publication: p,
                        keep_from,
                        new_stream,
                        ttl,
                        digest,
                        at_ms,
                    } => {
                        let Some(pos) = &p.position else { continue };
                        let key = (&*p.app_id, p.channel.as_str());
                        if *new_stream {
                            heads.remove(&key);
                            drop_entries.execute(params![key.0, key.1])?;
                        }
                        if pos.offset >= *keep_from {
                            let body = envelope::encode_publication(p);
                            put_entry.execute(params![
                                key.0,
                                key.1,
                                pos.offset as i64,
                                *at_ms as i64,
                                body
                            ])?;
                        }
                        heads.insert(
                            key,
                            Head {
                                epoch: &pos.epoch,
                                top: pos.offset,
                                ttl_ms: ttl.as_millis() as i64,
                                at_ms: *at_ms,
                                digest: digest.as_ref(),
                                keep_from: *keep_from,
                            },
                        );
                    }
                    JournalRecord::Created {
                        app_id,
                        channel,
                        epoch,
                        ttl,
                        at_ms,
                    } => {
                        let key = (&**app_id, channel.as_str());
                        heads.remove(&key);
                        drop_entries.execute(params![key.0, key.1])?;
                        write_head(
                            &tx,
                            key,
                            &Head {
                                epoch,
                                top: 0,
                                ttl_ms: ttl.as_millis() as i64,
                                at_ms: *at_ms,
                                digest: None,
                                keep_from: 1,
                            },
                        )?;
                    }
                    JournalRecord::Removed { app_id, channel } => {
                        let key = (&**app_id, channel.as_str());
                        heads.remove(&key);
                        drop_entries.execute(params![key.0, key.1])?;
                        drop_stream.execute(params![key.0, key.1])?;
                    }
                }
            }
            for (key, head) in &heads {
                write_head(&tx, *key, head)?;
            }
        }
        tx.commit()
    }
}

/// Write a stream's head and drop its entries below the window.
fn write_head(
    tx: &Connection,
    (app, channel): StreamKey<'_>,
    head: &Head<'_>,
) -> rusqlite::Result<()> {
    let mut put_stream = tx.prepare_cached(
        "INSERT OR REPLACE INTO streams
         (app, channel, epoch, top, ttl_ms, last_ms, digest, digest_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    put_stream.execute(params![
        app,
        channel,
        head.epoch,
        head.top as i64,
        head.ttl_ms,
        head.at_ms as i64,
        head.digest.map(|d| &d[..]),
        head.digest.map(|_| head.at_ms as i64),
    ])?;
    let mut trim =
        tx.prepare_cached("DELETE FROM entries WHERE app = ?1 AND channel = ?2 AND offset < ?3")?;
    trim.execute(params![app, channel, head.keep_from as i64])?;
    Ok(())
}

impl JournalWriter for DiskJournal {
    fn commit(&mut self, records: &[JournalRecord]) -> Result<(), String> {
        self.write(records).map_err(|e| e.to_string())
    }

    fn close(&mut self) -> Result<(), String> {
        set_node(&self.conn, "clean", "1").map_err(|e| e.to_string())?;
        // Fold the WAL into the database and fsync it, whatever the policy.
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| e.to_string())
    }
}
