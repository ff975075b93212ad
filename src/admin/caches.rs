//! SHOW CACHES: what each structure keyed by client input holds, and its
//! bound (see docs/BEHAVIOUR.md, "Bounds").

use super::Answer;
use crate::control::Control;

/// One row per bounded structure. Columns a structure has no use for are
/// NULL:
///
/// - `prepared_statements`: distinct statements clients hold; `refused`:
///   Parses of a new one turned away at the limit;
/// - `classifications`: the routing cache; `hits` and `misses`: lookups;
/// - `function_volatility`: function names known from pg_proc; `misses`:
///   lookups in pg_proc;
/// - `classify_threads`: long texts queued or being parsed off the
///   runtime thread (capacity: threads plus queue); `misses`: texts parsed
///   there; `refused`: texts turned away with the queue full.
pub fn caches(control: &Control) -> Answer {
    let shared = control.current();
    let text = |value: u64| Some(value.to_string());
    let count = |value: usize| Some(value.to_string());
    let registry = &shared.registry;
    let router = &shared.router;
    let classes = router.class_cache();
    let (functions, function_capacity, lookups) = router.function_cache();
    let offload = router.offload_stats();
    let rows = vec![
        vec![
            Some("prepared_statements".into()),
            count(registry.len()),
            count(registry.limit()),
            None,
            None,
            text(registry.refused()),
        ],
        vec![
            Some("classifications".into()),
            count(classes.len()),
            count(classes.capacity()),
            text(classes.hits()),
            text(classes.misses()),
            None,
        ],
        vec![
            Some("function_volatility".into()),
            count(functions),
            count(function_capacity),
            None,
            text(lookups),
            None,
        ],
        vec![
            Some("classify_threads".into()),
            count(offload.in_flight),
            count(offload.threads + offload.queue),
            None,
            text(offload.done),
            text(offload.refused),
        ],
    ];
    Answer::rows(
        &["name", "entries", "capacity", "hits", "misses", "refused"],
        rows,
    )
}
