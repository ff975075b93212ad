//! Session parameters in transaction mode: the client's startup parameters
//! and the `SET`s it ran outside a transaction, replayed on every server
//! connection it gets that does not carry them already.

use std::sync::Arc;

#[derive(Debug, Default)]
pub struct SessionSettings {
    /// `set_config` calls for the startup parameters.
    startup: Option<Arc<str>>,
    /// (parameter, the SET statement as the client wrote it), in order.
    sets: Vec<(String, String)>,
    /// Everything above as one query, `None` when empty.
    combined: Option<Arc<str>>,
}

impl SessionSettings {
    pub fn new(startup: Option<Arc<str>>) -> SessionSettings {
        SessionSettings {
            combined: startup.clone(),
            startup,
            sets: Vec::new(),
        }
    }

    /// The query that gives a server connection this session's settings.
    pub fn query(&self) -> &Option<Arc<str>> {
        &self.combined
    }

    /// Records a `SET` that succeeded outside a transaction.
    pub fn set(&mut self, parameter: String, sql: &str) {
        self.sets.retain(|(name, _)| *name != parameter);
        self.sets
            .push((parameter, sql.trim().trim_end_matches(';').to_owned()));
        self.rebuild();
    }

    /// Records a `RESET parameter`, or `RESET ALL` for `None`.
    pub fn reset(&mut self, parameter: Option<&str>) {
        match parameter {
            Some(parameter) => self.sets.retain(|(name, _)| name != parameter),
            None => self.sets.clear(),
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let mut parts: Vec<&str> = self.startup.iter().map(|s| &**s).collect();
        parts.extend(self.sets.iter().map(|(_, sql)| sql.as_str()));
        self.combined = (!parts.is_empty()).then(|| parts.join("; ").into());
    }
}

/// The parameter a plain `SET` outside a transaction changes, when the
/// statement is one pgrouter can replay: `SET [SESSION] name {TO | =} ...`,
/// `SET TIME ZONE ...`, `SET NAMES ...`. `None` for anything else (SET
/// LOCAL, SET ROLE, SET SESSION AUTHORIZATION...), which pins instead.
pub fn set_parameter(sql: &str) -> Option<String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let mut i = 1;
    if !words.first()?.eq_ignore_ascii_case("set") {
        return None;
    }
    if words.get(i)?.eq_ignore_ascii_case("session") {
        i += 1;
    }
    let word = *words.get(i)?;
    let lower = word.to_ascii_lowercase();
    match lower.as_str() {
        "local" | "role" | "authorization" | "characteristics" | "transaction" | "constraints" => {
            None
        }
        "time" if words.get(i + 1)?.eq_ignore_ascii_case("zone") => Some("timezone".into()),
        "names" => Some("client_encoding".into()),
        _ => {
            let name = lower.split(['=', ' ']).next()?.trim_matches('"');
            (!name.is_empty() && name != "pgrouter.route").then(|| name.to_owned())
        }
    }
}

/// The parameter a `RESET` names: `Some(None)` for `RESET ALL`.
pub fn reset_parameter(sql: &str) -> Option<Option<String>> {
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [reset, all] if reset.eq_ignore_ascii_case("reset") && all.eq_ignore_ascii_case("all") => {
            Some(None)
        }
        [reset, name] if reset.eq_ignore_ascii_case("reset") => {
            Some(Some(name.trim_matches('"').to_ascii_lowercase()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayable_sets_are_recognised() {
        assert_eq!(
            set_parameter("SET search_path TO a, b").as_deref(),
            Some("search_path")
        );
        assert_eq!(
            set_parameter("set session Work_Mem = '8MB'").as_deref(),
            Some("work_mem")
        );
        assert_eq!(
            set_parameter("SET statement_timeout='1s'").as_deref(),
            Some("statement_timeout")
        );
        assert_eq!(
            set_parameter("SET TIME ZONE 'UTC'").as_deref(),
            Some("timezone")
        );
        assert_eq!(set_parameter("SET LOCAL work_mem = '1MB'"), None);
        assert_eq!(set_parameter("SET ROLE admin"), None);
        assert_eq!(set_parameter("SET SESSION AUTHORIZATION bob"), None);
        assert_eq!(reset_parameter("RESET ALL"), Some(None));
        assert_eq!(
            reset_parameter("reset work_mem;"),
            Some(Some("work_mem".into()))
        );
    }

    #[test]
    fn settings_combine_and_later_sets_win() {
        let mut settings = SessionSettings::new(Some("SELECT set_config('a', 'b', false)".into()));
        settings.set("work_mem".into(), "SET work_mem = '1MB';");
        settings.set("search_path".into(), "SET search_path TO x");
        settings.set("work_mem".into(), "SET work_mem = '2MB'");
        assert_eq!(
            settings.query().as_deref(),
            Some("SELECT set_config('a', 'b', false); SET search_path TO x; SET work_mem = '2MB'")
        );
        settings.reset(None);
        assert_eq!(
            settings.query().as_deref(),
            Some("SELECT set_config('a', 'b', false)")
        );
    }
}
