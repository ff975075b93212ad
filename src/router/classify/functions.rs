//! What a function call means for routing: a known writer (the statement
//! must run on the primary whatever pg_proc says), a call known to be safe on
//! a replica (left out of `Classification::functions`), or anything else
//! (listed, for the router to look up in pg_proc).

use sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, ObjectName, ObjectNamePart, Value};

use super::walk::Effect;

/// Built-in functions that pg_proc marks volatile (or that are listed for
/// clarity) but that neither write nor change session state, so a read
/// calling them may still run on a replica. Matched exactly (case-sensitive
/// after PostgreSQL's folding of unquoted names) on the last name segment,
/// when the call names no schema or `pg_catalog`.
///
/// `pg_current_wal_lsn` is left out on purpose: it fails on a replica.
pub const READ_ONLY_VOLATILE_BUILTINS: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "now",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v4",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "inet_server_addr",
    "inet_server_port",
    "inet_client_addr",
    "inet_client_port",
    "version",
    "current_setting",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "txid_current_snapshot",
    "pg_current_snapshot",
    "pg_table_size",
    "pg_relation_size",
    "pg_database_size",
    "pg_total_relation_size",
    "pg_indexes_size",
    "pg_typeof",
    "format",
    "to_char",
];

/// Prefixes of built-ins that are safe on a replica (the statistics readers).
pub const READ_ONLY_BUILTIN_PREFIXES: &[&str] = &["pg_stat_get_"];

/// Names the parser reports as function calls although they are SQL syntax
/// (several are absent from pg_proc, so the router could not look them up)
/// and never write.
pub const SQL_SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "grouping",
    "row",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "current_catalog",
    "current_schema",
    "session_user",
    "system_user",
    "user",
];

/// What one call contributes: the name to list (if not known safe) and its
/// effect on the statement.
pub(super) struct Call {
    pub listed: Option<Box<str>>,
    pub effect: Effect,
}

/// Classifies a call of `name` with `args`.
pub(super) fn classify_call(name: &ObjectName, args: &[FunctionArg]) -> Call {
    let Some(parts) = folded_parts(name) else {
        // A name made by a dialect-specific function: list it as written.
        return Call {
            listed: Some(name.to_string().into_boxed_str()),
            effect: Effect::Read,
        };
    };
    let full: Box<str> = parts.join(".").into_boxed_str();
    let builtin = match parts.len() {
        0 => false,
        1 => true,
        n => parts.get(n - 2).is_some_and(|s| s == "pg_catalog"),
    };
    let last = parts.last().map_or("", String::as_str);
    if !builtin {
        return Call {
            listed: Some(full),
            effect: Effect::Read,
        };
    }
    let effect = known_effect(&last.to_ascii_lowercase(), args);
    let safe = READ_ONLY_VOLATILE_BUILTINS.contains(&last)
        || SQL_SYNTAX_FUNCTIONS.contains(&last)
        || READ_ONLY_BUILTIN_PREFIXES
            .iter()
            .any(|p| last.starts_with(p))
        || (last == "set_config" && effect == Effect::Read);
    Call {
        listed: (!safe).then_some(full),
        effect,
    }
}

/// The name's segments, folded as PostgreSQL folds identifiers: unquoted
/// ones to lower case (ASCII only, as with a UTF-8 database), quoted ones
/// as written.
fn folded_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_none() => {
                Some(ident.value.to_ascii_lowercase())
            }
            ObjectNamePart::Identifier(ident) => Some(ident.value.clone()),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// The effect of the built-ins that write or change session state whatever
/// pg_proc says (`lower` is the lower-cased last segment).
fn known_effect(lower: &str, args: &[FunctionArg]) -> Effect {
    match lower {
        "nextval" => Effect::Write("nextval"),
        "setval" => Effect::Write("setval"),
        "txid_current" | "pg_current_xact_id" => Effect::Write("txid"),
        "pg_advisory_xact_lock"
        | "pg_advisory_xact_lock_shared"
        | "pg_try_advisory_xact_lock"
        | "pg_try_advisory_xact_lock_shared" => Effect::Write("advisory lock"),
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared"
        | "pg_advisory_unlock"
        | "pg_advisory_unlock_shared"
        | "pg_advisory_unlock_all" => Effect::Session("advisory lock"),
        "lo_create" | "lo_creat" | "lo_import" | "lo_export" | "lo_unlink" | "lowrite"
        | "lo_put" | "lo_from_bytea" | "lo_truncate" | "lo_truncate64" => {
            Effect::Write("large object")
        }
        "pg_notify" => Effect::Write("notify"),
        "dblink_exec" => Effect::Write("dblink_exec"),
        // set_config(name, value, is_local): only a literal `true` keeps the
        // change inside the transaction.
        "set_config" if is_literal_true(args.get(2)) && args.len() == 3 => Effect::Read,
        "set_config" => Effect::Session("set_config"),
        _ => Effect::Read,
    }
}

fn is_literal_true(arg: Option<&FunctionArg>) -> bool {
    matches!(
        arg,
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))))
            if v.value == Value::Boolean(true)
    )
}
