//! A bounded cache of classifications, shared by all sessions, so a hot
//! query text is parsed once.
//!
//! The map is split into shards, each behind its own short-held mutex. A
//! hit hashes the text, locks one shard, looks the `&str` up (no
//! allocation) and clones an `Arc`. A miss classifies outside the lock.
//! A full shard evicts one entry chosen by CLOCK (second chance): every hit
//! marks its entry, and the clock hand passes over marked entries once,
//! clearing the mark, before evicting an unmarked one.
//!
//! Long texts are keyed by a 128-bit digest of their literal-free text
//! rather than the text itself, so that an entry stays small however long
//! the text; a text cannot start with NUL, so no digest key equals a text.

use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::classify::{classify, Classification};
use super::fingerprint::literal_free;

/// Texts longer than this are cached under a digest of their text, so
/// that a few huge texts (bulk INSERTs) cannot make the cache huge.
pub const MAX_CACHED_LEN: usize = 16 * 1024;

const MAX_SHARDS: usize = 16;
/// Small shards would evict early when texts hash unevenly.
const MIN_SHARD_CAPACITY: usize = 64;

thread_local! {
    /// The literal-free lookup key, built in a buffer each thread reuses.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A bounded, thread-safe cache from SQL text (literals taken out, see
/// `fingerprint`) to its classification.
pub struct ClassCache {
    /// Picks the shard; keyed randomly so that clients cannot aim at one.
    /// foldhash rather than SipHash, here and in the shards' maps: a hit
    /// hashes the text twice, on every query.
    shard_hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Two independently seeded hashes make a long text's 128-bit digest.
    digest: [RandomState; 2],
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What a text is cached under, for a classification made elsewhere (see
/// [`ClassCache::get`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

struct Shard {
    /// Text -> index in `slots`.
    index: HashMap<Arc<str>, usize, RandomState>,
    slots: Vec<Slot>,
    capacity: usize,
    hand: usize,
}

struct Slot {
    text: Arc<str>,
    value: Arc<Classification>,
    referenced: bool,
}

impl ClassCache {
    /// A cache holding at most `capacity` texts (0: cache nothing). The
    /// capacity is split evenly over the shards (rounding down), each
    /// holding at least [`MIN_SHARD_CAPACITY`] texts if the capacity allows.
    pub fn new(capacity: usize) -> Self {
        let shard_count = (capacity / MIN_SHARD_CAPACITY).clamp(1, MAX_SHARDS);
        let per_shard = capacity / shard_count;
        let shards = (0..shard_count)
            .map(|_| {
                Mutex::new(Shard {
                    index: HashMap::with_capacity_and_hasher(per_shard, RandomState::default()),
                    slots: Vec::with_capacity(per_shard),
                    capacity: per_shard,
                    hand: 0,
                })
            })
            .collect();
        ClassCache {
            shard_hasher: RandomState::default(),
            shards,
            digest: [RandomState::default(), RandomState::default()],
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The classification of `sql`, from the cache or freshly computed (and
    /// then cached). Concurrent misses on one text may both classify it; the
    /// first to insert wins and both return its `Arc`.
    pub fn get_or_classify(&self, sql: &str) -> Arc<Classification> {
        if sql.len() > MAX_CACHED_LEN {
            return match self.get(sql) {
                Ok(value) => value,
                Err(key) => self.insert(&key, Arc::new(classify(sql))),
            };
        }
        KEY.with_borrow_mut(|key| {
            let key = if literal_free(sql, key) {
                key.as_str()
            } else {
                sql
            };
            let shard = self.shard(key);
            if let Some(value) = shard.lock().get(key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return value;
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            let value = Arc::new(classify(sql));
            shard.lock().insert(key, value)
        })
    }

    /// The cached classification of `sql`, or the key to cache it under
    /// once it is made (elsewhere: see `router::classifier`).
    pub fn get(&self, sql: &str) -> Result<Arc<Classification>, Key> {
        let found = if sql.len() > MAX_CACHED_LEN {
            let key = self.long_key(sql);
            self.shard(&key.0).lock().get(&key.0).ok_or(key)
        } else {
            KEY.with_borrow_mut(|buffer| {
                let key = if literal_free(sql, buffer) {
                    buffer.as_str()
                } else {
                    sql
                };
                self.shard(key)
                    .lock()
                    .get(key)
                    .ok_or_else(|| Key(key.to_owned()))
            })
        };
        let counter = if found.is_ok() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches `value` under `key` unless something is cached there
    /// already; returns what is cached.
    pub fn insert(&self, key: &Key, value: Arc<Classification>) -> Arc<Classification> {
        self.shard(&key.0).lock().insert(&key.0, value)
    }

    /// A long text's key: a digest of its literal-free text.
    fn long_key(&self, sql: &str) -> Key {
        let mut free = String::new();
        let text = if literal_free(sql, &mut free) {
            free.as_str()
        } else {
            sql
        };
        let [a, b] = &self.digest;
        Key(format!(
            "\0{:016x}{:016x}",
            a.hash_one(text),
            b.hash_one(text)
        ))
    }

    /// Replaces what is cached for `sql` (e.g. a read found to write).
    pub fn replace(&self, sql: &str, value: Arc<Classification>) {
        let mut key = String::new();
        let sql = if sql.len() > MAX_CACHED_LEN {
            key = self.long_key(sql).0;
            key.as_str()
        } else if literal_free(sql, &mut key) {
            key.as_str()
        } else {
            sql
        };
        let mut shard = self.shard(sql).lock();
        match shard.index.get(sql).copied() {
            Some(at) => {
                if let Some(slot) = shard.slots.get_mut(at) {
                    slot.value = value;
                }
            }
            None => {
                shard.insert(sql, value);
            }
        }
    }

    /// The most texts it holds.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.lock().capacity).sum()
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that had to classify.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn shard(&self, sql: &str) -> &Mutex<Shard> {
        let hash = self.shard_hasher.hash_one(sql);
        // Never out of range: the modulus is the length (at least 1).
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }
}

impl Shard {
    fn get(&mut self, sql: &str) -> Option<Arc<Classification>> {
        let &at = self.index.get(sql)?;
        let slot = self.slots.get_mut(at)?;
        slot.referenced = true;
        Some(Arc::clone(&slot.value))
    }

    /// Caches `value` for `sql` unless another thread did first; returns the
    /// cached value.
    fn insert(&mut self, sql: &str, value: Arc<Classification>) -> Arc<Classification> {
        if let Some(existing) = self.get(sql) {
            return existing;
        }
        if self.capacity == 0 {
            return value;
        }
        let text: Arc<str> = Arc::from(sql);
        let slot = Slot {
            text: Arc::clone(&text),
            value: Arc::clone(&value),
            referenced: false,
        };
        if self.slots.len() < self.capacity {
            self.index.insert(text, self.slots.len());
            self.slots.push(slot);
            return value;
        }
        let victim = self.clock_victim();
        if let Some(old) = self.slots.get_mut(victim) {
            let old = std::mem::replace(old, slot);
            self.index.remove(&old.text);
            self.index.insert(text, victim);
        }
        value
    }

    /// The index of the entry to evict: the first unreferenced one from the
    /// hand on, clearing marks on the way (at most one full turn plus one).
    fn clock_victim(&mut self) -> usize {
        let len = self.slots.len();
        for _ in 0..=len {
            let at = self.hand % len.max(1);
            self.hand = (at + 1) % len.max(1);
            match self.slots.get_mut(at) {
                Some(slot) if slot.referenced => slot.referenced = false,
                _ => return at,
            }
        }
        self.hand
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::Kind;

    #[test]
    fn hits_return_the_same_arc() {
        let cache = ClassCache::new(8);
        let a = cache.get_or_classify("SELECT 1");
        let b = cache.get_or_classify("SELECT 1");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.kind, Kind::Read);
        assert_eq!((cache.hits(), cache.misses(), cache.len()), (1, 1, 1));
        let c = cache.get_or_classify("DELETE FROM t");
        assert_eq!(c.kind, Kind::Write("delete"));
        assert_eq!((cache.hits(), cache.misses(), cache.len()), (1, 2, 2));
    }

    #[test]
    fn eviction_keeps_the_size_within_capacity() {
        for capacity in [1, 3, 16, 17, 100, 1000, 1030] {
            let cache = ClassCache::new(capacity);
            for i in 0..capacity * 5 + 7 {
                cache.get_or_classify(&format!("SELECT {i}"));
                assert!(cache.len() <= capacity, "capacity {capacity}");
            }
            assert!(!cache.is_empty());
        }
    }

    #[test]
    fn a_hot_entry_survives_eviction() {
        // Which shard a text lands in is random: drive one shard directly.
        let mut shard = Shard {
            index: HashMap::default(),
            slots: Vec::new(),
            capacity: 4,
            hand: 0,
        };
        let value = Arc::new(classify("SELECT 1"));
        for i in 0..4 {
            shard.insert(&format!("q{i}"), Arc::clone(&value));
        }
        for round in 0..50 {
            assert!(shard.get("q0").is_some(), "round {round}");
            shard.insert(&format!("new{round}"), Arc::clone(&value));
            assert_eq!(shard.slots.len(), 4);
            assert_eq!(shard.index.len(), 4);
        }
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = ClassCache::new(0);
        let a = cache.get_or_classify("SELECT 1");
        let b = cache.get_or_classify("SELECT 1");
        assert_eq!(a, b);
        assert_eq!((cache.len(), cache.hits(), cache.misses()), (0, 0, 2));
    }

    #[test]
    fn long_texts_are_cached_under_a_digest() {
        let cache = ClassCache::new(8);
        let long = format!("SELECT 1{}", ", 1".repeat(MAX_CACHED_LEN / 3));
        assert_eq!(cache.get_or_classify(&long).kind, Kind::Read);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&long).is_ok());
        let cached = cache.get(&long.replace(", 1", ", 2"));
        assert!(cached.is_ok(), "literals do not change the key");
        let stored = cache.shards.iter().find_map(|s| {
            let shard = s.lock();
            shard.slots.first().map(|slot| slot.text.len())
        });
        assert_eq!(stored, Some(33), "the entry holds the digest, not the text");
    }

    #[test]
    fn shared_between_threads() {
        let cache = Arc::new(ClassCache::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let got = cache.get_or_classify(&format!("SELECT {}", (i * (t + 1)) % 100));
                        assert_eq!(got.kind, Kind::Read);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(cache.len() <= 64);
        assert_eq!(cache.hits() + cache.misses(), 800);
    }

    #[test]
    fn a_hit_is_fast() {
        let cache = ClassCache::new(1024);
        let sql = "SELECT id, name, email FROM users WHERE id = $1 AND tenant_id = $2 ORDER BY id LIMIT 1";
        cache.get_or_classify(sql);
        let rounds = 100_000;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(cache.get_or_classify(std::hint::black_box(sql)));
        }
        let per_hit = start.elapsed() / rounds;
        eprintln!("cache hit: {per_hit:?}");
        // Measured: ~100 ns in release builds, ~1 µs in debug builds; the
        // bounds leave room for a busy machine.
        let bound = if cfg!(debug_assertions) { 25 } else { 2 };
        assert!(
            per_hit < std::time::Duration::from_micros(bound),
            "{per_hit:?}"
        );
    }
}
