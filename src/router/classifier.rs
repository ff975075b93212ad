//! How a SQL text gets its classification, by its length, so that no text
//! keeps the runtime thread (which serves every client) parsing:
//!
//! - up to `classify_offload_size`: parsed here, once (then cached);
//! - up to `classify_max_size`: from the cache, else parsed on a classify
//!   thread (`offload`) into the cache. The synchronous [`Classifier::get`]
//!   does not wait for that: meanwhile the text is judged by the leading
//!   words of its statements ([`classify_unparsed`]), which never makes it
//!   a read, so it goes to the primary. [`Classifier::get_async`] waits;
//! - longer: never parsed, judged by its first keyword
//!   ([`classify_too_long`]), to the primary.

use super::cache::ClassCache;
use super::classify::{classify_too_long, classify_unparsed, Classification};
use super::offload::{Offload, OffloadStats};
use crate::config::RoutingConfig;
use std::sync::Arc;

pub struct Classifier {
    cache: Arc<ClassCache>,
    offload: Offload,
    /// Longer texts are parsed on a classify thread.
    offload_size: usize,
    /// Longer texts are not parsed at all.
    max_size: usize,
}

/// Where a text of some length is classified.
enum Length {
    Short,
    Long,
    TooLong,
}

impl Classifier {
    pub fn new(routing: &RoutingConfig) -> Classifier {
        let cache = Arc::new(ClassCache::new(routing.statement_cache_size));
        let max_size = usize::try_from(routing.classify_max_size.get_ref().0).unwrap_or(usize::MAX);
        let offload_size =
            usize::try_from(routing.classify_offload_size.get_ref().0).unwrap_or(usize::MAX);
        Classifier {
            offload: Offload::new(
                cache.clone(),
                *routing.classify_threads.get_ref(),
                routing.classify_queue,
            ),
            cache,
            offload_size: offload_size.min(max_size),
            max_size,
        }
    }

    fn length(&self, sql: &str) -> Length {
        if sql.len() <= self.offload_size {
            Length::Short
        } else if self.parses_off_thread(sql.len()) {
            Length::Long
        } else {
            Length::TooLong
        }
    }

    /// Whether a text of `len` bytes goes to a classify thread when it is
    /// not cached.
    pub fn parses_off_thread(&self, len: usize) -> bool {
        self.offload_size < len && len <= self.max_size
    }

    /// The classification, now: a long text not classified yet is queued
    /// for a classify thread and judged by its leading words meanwhile.
    pub fn get(&self, sql: &str) -> Arc<Classification> {
        match self.length(sql) {
            Length::Short => self.cache.get_or_classify(sql),
            Length::TooLong => Arc::new(classify_too_long(sql)),
            Length::Long => match self.cache.get(sql) {
                Ok(class) => class,
                Err(key) => {
                    // Refused (queue full, or queued already): the text
                    // goes to the primary this time anyway.
                    let _ = self.offload.submit(sql, key, false);
                    Arc::new(classify_unparsed(sql))
                }
            },
        }
    }

    /// The classification, waiting for a classify thread to parse a long
    /// text (never on this thread); when none can take it (the queue is
    /// full), judged by its leading words as [`Classifier::get`] does.
    pub async fn get_async(&self, sql: &str) -> Arc<Classification> {
        if !matches!(self.length(sql), Length::Long) {
            return self.get(sql);
        }
        let key = match self.cache.get(sql) {
            Ok(class) => return class,
            Err(key) => key,
        };
        match self.offload.submit(sql, key, true) {
            Ok(Some(classified)) => match classified.await {
                Ok(class) => class,
                // The router was dropped under us (a reload retired it).
                Err(_) => Arc::new(classify_unparsed(sql)),
            },
            _ => Arc::new(classify_unparsed(sql)),
        }
    }

    /// Replaces what is cached for `sql`.
    pub fn replace(&self, sql: &str, value: Arc<Classification>) {
        self.cache.replace(sql, value);
    }

    pub fn cache(&self) -> &ClassCache {
        &self.cache
    }

    pub fn offload_stats(&self) -> OffloadStats {
        self.offload.stats()
    }
}

#[cfg(test)]
mod tests;
