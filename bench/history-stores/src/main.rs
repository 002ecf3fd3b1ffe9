//! Herald's disk history writes one entry per publication, updates its stream's head and
//! drops the entry that fell out of the window, in group commits from one writer thread.
//! This program runs that pattern on each candidate store, durable (fsync per commit) and
//! not (handed to the OS per commit), and times a reopen that loads every stream.
//!
//! `cargo run --release -- [runs]` prints one line per store, mode and batch: the median
//! appends per second over the runs, with min and max.

use redb::{ReadableDatabase, ReadableTable};
use std::path::Path;
use std::time::Instant;

const STREAMS: u64 = 100;
const KEEP: u64 = 100;
const PAYLOAD: usize = 300;

trait Store {
    /// One group commit of `records` appends: (stream, offset) for each.
    fn commit(&mut self, records: &[(u64, u64)], payload: &[u8]);
    /// Entries a reopen finds, read back in full.
    fn load(path: &Path, sync: bool) -> u64
    where
        Self: Sized;
}

fn key(stream: u64, offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&stream.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

struct Sqlite(rusqlite::Connection);

impl Sqlite {
    fn open(path: &Path, sync: bool) -> Self {
        let c = rusqlite::Connection::open(path.join("h.sqlite")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", if sync { "FULL" } else { "NORMAL" })
            .unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS streams (s INTEGER PRIMARY KEY, top INTEGER);",
        )
        .unwrap();
        Self(c)
    }
}

impl Store for Sqlite {
    fn commit(&mut self, records: &[(u64, u64)], payload: &[u8]) {
        let tx = self.0.transaction().unwrap();
        {
            let mut put = tx.prepare_cached("INSERT INTO entries VALUES (?1, ?2)").unwrap();
            let mut head = tx
                .prepare_cached("INSERT OR REPLACE INTO streams VALUES (?1, ?2)")
                .unwrap();
            let mut del = tx.prepare_cached("DELETE FROM entries WHERE k = ?1").unwrap();
            for &(s, o) in records {
                put.execute((&key(s, o)[..], payload)).unwrap();
                head.execute((s as i64, o as i64)).unwrap();
                if o > KEEP {
                    del.execute((&key(s, o - KEEP)[..],)).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    fn load(path: &Path, sync: bool) -> u64 {
        let c = Sqlite::open(path, sync);
        let mut q = c.0.prepare("SELECT k, v FROM entries ORDER BY k").unwrap();
        let mut rows = q.query(()).unwrap();
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            let v: Vec<u8> = r.get(1).unwrap();
            n += (v.len() == PAYLOAD) as u64;
        }
        n
    }
}

const ENTRIES: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("entries");
const HEADS: redb::TableDefinition<'_, u64, u64> = redb::TableDefinition::new("streams");

struct Redb(redb::Database, bool);

impl Store for Redb {
    fn commit(&mut self, records: &[(u64, u64)], payload: &[u8]) {
        let mut tx = self.0.begin_write().unwrap();
        if !self.1 {
            tx.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut entries = tx.open_table(ENTRIES).unwrap();
            let mut heads = tx.open_table(HEADS).unwrap();
            for &(s, o) in records {
                entries.insert(&key(s, o)[..], payload).unwrap();
                heads.insert(s, o).unwrap();
                if o > KEEP {
                    entries.remove(&key(s, o - KEEP)[..]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    fn load(path: &Path, _sync: bool) -> u64 {
        let db = redb::Database::create(path.join("h.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let t = match tx.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return 0,
            Err(e) => panic!("{e}"),
        };
        let mut n = 0;
        for e in t.iter().unwrap() {
            let (_, v) = e.unwrap();
            n += (v.value().len() == PAYLOAD) as u64;
        }
        n
    }
}

struct Fjall {
    ks: fjall::Database,
    entries: fjall::Keyspace,
    heads: fjall::Keyspace,
    sync: bool,
}

impl Fjall {
    fn open(path: &Path) -> Self {
        let ks = fjall::Database::builder(path.join("h.fjall")).open().unwrap();
        let entries = ks
            .keyspace("entries", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let heads = ks
            .keyspace("streams", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Self { ks, entries, heads, sync: false }
    }
}

impl Store for Fjall {
    fn commit(&mut self, records: &[(u64, u64)], payload: &[u8]) {
        let mut b = self.ks.batch();
        for &(s, o) in records {
            b.insert(&self.entries, key(s, o), payload);
            b.insert(&self.heads, s.to_be_bytes(), o.to_be_bytes());
            if o > KEEP {
                b.remove(&self.entries, key(s, o - KEEP));
            }
        }
        b.commit().unwrap();
        let mode = if self.sync { fjall::PersistMode::SyncAll } else { fjall::PersistMode::Buffer };
        self.ks.persist(mode).unwrap();
    }
    fn load(path: &Path, _sync: bool) -> u64 {
        let f = Fjall::open(path);
        let mut n = 0;
        for e in f.entries.iter() {
            let v = e.value().unwrap();
            n += (v.len() == PAYLOAD) as u64;
        }
        n
    }
}

fn run(store: &mut dyn Store, batch: usize, total: u64) -> f64 {
    let payload = vec![b'x'; PAYLOAD];
    let mut tops = vec![0u64; STREAMS as usize];
    let mut records = Vec::with_capacity(batch);
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        records.clear();
        for i in 0..batch as u64 {
            let s = (done + i) % STREAMS;
            tops[s as usize] += 1;
            records.push((s, tops[s as usize]));
        }
        store.commit(&records, &payload);
        done += batch as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Child: write 10,000 appends without fsync, then die the way SIGKILL kills (no
/// destructors, no flush). The parent then counts what a reopen finds.
fn crash(name: &str, root: &Path) -> ! {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let total = 10_000;
    match name {
        "sqlite" => {
            let mut s = Sqlite::open(root, false);
            run(&mut s, 64, total);
            std::mem::forget(s);
        }
        "redb" => {
            let mut s = Redb(redb::Database::create(root.join("h.redb")).unwrap(), false);
            run(&mut s, 64, total);
            std::mem::forget(s);
        }
        _ => {
            let mut s = Fjall::open(root);
            run(&mut s, 64, total);
            std::mem::forget(s);
        }
    }
    std::process::abort();
}

fn main() {
    if let Some(name) = std::env::args().nth(2).filter(|_| std::env::args().nth(1).as_deref() == Some("crash")) {
        crash(&name, &std::env::temp_dir().join(format!("herald-crash-{name}")));
    }
    let runs: usize = std::env::args().nth(1).map_or(3, |s| s.parse().unwrap());
    let root = std::env::temp_dir().join("herald-history-stores");
    println!("store   sync  batch  appends/s (median [min..max] of {runs})  reopen+load ms  disk KiB");
    for &(sync, batch, total) in &[(false, 64usize, 200_000u64), (true, 64, 50_000), (true, 1, 2_000)] {
        for name in ["sqlite", "redb", "fjall"] {
            let mut rates = Vec::new();
            let mut loads = Vec::new();
            let mut size = 0;
            for _ in 0..runs {
                let _ = std::fs::remove_dir_all(&root);
                std::fs::create_dir_all(&root).unwrap();
                let rate = match name {
                    "sqlite" => run(&mut Sqlite::open(&root, sync), batch, total),
                    "redb" => {
                        let db = redb::Database::create(root.join("h.redb")).unwrap();
                        run(&mut Redb(db, sync), batch, total)
                    }
                    _ => {
                        let mut f = Fjall::open(&root);
                        f.sync = sync;
                        let r = run(&mut f, batch, total);
                        drop(f);
                        r
                    }
                };
                rates.push(rate);
                size = dir_size(&root) / 1024;
                let t = Instant::now();
                let n = match name {
                    "sqlite" => Sqlite::load(&root, sync),
                    "redb" => Redb::load(&root, sync),
                    _ => Fjall::load(&root, sync),
                };
                assert_eq!(n, STREAMS * KEEP.min(total / STREAMS), "{name} lost entries");
                loads.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let (m, lo, hi) = median(rates);
            let (l, _, _) = median(loads);
            println!("{name:7} {sync:5} {batch:5}  {m:>10.0} [{lo:.0}..{hi:.0}]  {l:>10.1}  {size:>8}");
        }
    }
    println!("\nkilled after 10,000 appends without fsync (batches of 64): entries a reopen finds");
    let me = std::env::current_exe().unwrap();
    for name in ["sqlite", "redb", "fjall"] {
        let status = std::process::Command::new(&me).args(["crash", name]).status().unwrap();
        assert!(!status.success());
        let root = std::env::temp_dir().join(format!("herald-crash-{name}"));
        let n = match name {
            "sqlite" => Sqlite::load(&root, false),
            "redb" => Redb::load(&root, false),
            _ => Fjall::load(&root, false),
        };
        println!("{name:7} {n:>6} of {}", STREAMS * KEEP);
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() { dir_size(&e.path()) } else { m.len() }
        })
        .sum()
}
