//! Threads that classify long SQL texts, so that parsing one never stalls
//! the runtime thread every other client is served on.
//!
//! A fixed number of threads take texts from one bounded queue; a text
//! that finds the queue full is refused at once (the caller then routes it
//! by its leading words, to the primary) rather than waiting or growing
//! the queue. Each result goes into the classification cache, whether or
//! not anyone still waits for it. The threads start with the first text
//! and end when the router that owns them is dropped (the queue's sender
//! goes, and their next wait returns).

use super::cache::{ClassCache, Key};
use super::classify::{classify, Classification};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;

/// Why a text was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its limit.
    Full,
    /// The same text is queued already (for a caller not waiting).
    Pending,
    /// No classify thread could be started.
    NoThread,
}

struct Job {
    text: Box<str>,
    key: Key,
    /// Digest of `key` in `pending`, for a job nobody waits for.
    pending: Option<u64>,
    reply: Option<oneshot::Sender<Arc<Classification>>>,
}

/// What the threads share with the router.
struct Shared {
    cache: Arc<ClassCache>,
    /// Keys queued without a waiter: the same text seen again meanwhile is
    /// not queued twice.
    pending: Mutex<HashSet<u64>>,
    /// Queued or being classified.
    in_flight: AtomicUsize,
    /// Classified on a classify thread.
    done: AtomicU64,
    /// Turned away because the queue was full.
    refused: AtomicU64,
}

pub struct Offload {
    threads: usize,
    queue: usize,
    sender: OnceLock<Option<SyncSender<Job>>>,
    shared: Arc<Shared>,
    hasher: foldhash::fast::RandomState,
}

/// Counters for the console and the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadStats {
    pub threads: usize,
    pub queue: usize,
    pub in_flight: usize,
    pub done: u64,
    pub refused: u64,
}

impl Offload {
    pub fn new(cache: Arc<ClassCache>, threads: usize, queue: usize) -> Offload {
        Offload {
            threads: threads.max(1),
            queue,
            sender: OnceLock::new(),
            shared: Arc::new(Shared {
                cache,
                pending: Mutex::new(HashSet::new()),
                in_flight: AtomicUsize::new(0),
                done: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Queues `text` to be classified and cached under `key`; the receiver
    /// gets the classification when `wait` is set.
    pub fn submit(
        &self,
        text: &str,
        key: Key,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Arc<Classification>>>, Refused> {
        let Some(sender) = self.sender.get_or_init(|| self.start()) else {
            return Err(Refused::NoThread);
        };
        let pending = if wait {
            None
        } else {
            let digest = self.hasher.hash_one(&key);
            if !self.shared.pending.lock().insert(digest) {
                return Err(Refused::Pending);
            }
            Some(digest)
        };
        let (reply, receiver) = if wait {
            let (reply, receiver) = oneshot::channel();
            (Some(reply), Some(receiver))
        } else {
            (None, None)
        };
        self.shared.in_flight.fetch_add(1, Relaxed);
        let job = Job {
            text: text.into(),
            key,
            pending,
            reply,
        };
        match sender.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.shared.finish(&job);
                self.shared.refused.fetch_add(1, Relaxed);
                Err(Refused::Full)
            }
        }
    }

    pub fn stats(&self) -> OffloadStats {
        OffloadStats {
            threads: self.threads,
            queue: self.queue,
            in_flight: self.shared.in_flight.load(Relaxed),
            done: self.shared.done.load(Relaxed),
            refused: self.shared.refused.load(Relaxed),
        }
    }

    /// Starts the threads; `None` when not even one would start.
    fn start(&self) -> Option<SyncSender<Job>> {
        let (sender, receiver) = sync_channel::<Job>(self.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for index in 0..self.threads {
            let (receiver, shared) = (receiver.clone(), self.shared.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("pgrouter-classify-{index}"))
                .spawn(move || work(&receiver, &shared));
            match spawned {
                Ok(_) => started += 1,
                Err(error) => tracing::warn!(%error, "cannot start a classify thread"),
            }
        }
        (started > 0).then_some(sender)
    }
}

/// One classify thread: until the router is dropped, classify what comes.
fn work(receiver: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        // One thread waits on the queue, the others on the lock.
        let next = receiver.lock().recv();
        let Ok(job) = next else {
            return;
        };
        let value = shared.cache.insert(&job.key, Arc::new(classify(&job.text)));
        shared.done.fetch_add(1, Relaxed);
        shared.finish(&job);
        if let Some(reply) = job.reply {
            // The waiter may have gone (its client left): the cache has it.
            let _ = reply.send(value);
        }
    }
}

impl Shared {
    fn finish(&self, job: &Job) {
        if let Some(digest) = job.pending {
            self.pending.lock().remove(&digest);
        }
        self.in_flight.fetch_sub(1, Relaxed);
    }
}
