//! Session parameters in transaction mode: the client's startup parameters
//! and the `SET`s it ran outside a transaction, kept as values and
//! replayed on every server connection it gets that does not carry them
//! already.
//!
//! A replayed `SET` is rebuilt from its parsed form (parameter and value
//! expressions), never the client's text: a comment or a second statement
//! in what the client wrote cannot swallow the rest of the replay.

use sqlparser::ast::{ContextModifier, ObjectName, ObjectNamePart, Set, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::sync::Arc;

/// A `SET` longer than this is not replayed (it pins): parsing it is
/// work the runtime thread should not do, and no real setting is that long.
const MAX_REPLAYED_SET: usize = 4096;

/// One `SET` pgrouter replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The parameter, as PostgreSQL names it (lower case, unquoted).
    pub name: String,
    /// The statement that sets it, rebuilt from the parsed SQL.
    pub statement: String,
}

#[derive(Debug, Default)]
pub struct SessionSettings {
    /// `set_config` calls for the startup parameters.
    startup: Option<Arc<str>>,
    /// The replayed `SET`s, in order, one per parameter.
    sets: Vec<Setting>,
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
    pub fn set(&mut self, setting: Setting) {
        self.sets.retain(|known| known.name != setting.name);
        self.sets.push(setting);
        self.rebuild();
    }

    /// Records a `RESET parameter`, or `RESET ALL` (and `DISCARD ALL`) for
    /// `None`: back to the startup values.
    pub fn reset(&mut self, parameter: Option<&str>) {
        match parameter {
            Some(parameter) => self.sets.retain(|known| known.name != parameter),
            None => self.sets.clear(),
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let mut parts: Vec<&str> = self.startup.iter().map(|s| &**s).collect();
        parts.extend(self.sets.iter().map(|set| set.statement.as_str()));
        self.combined = (!parts.is_empty()).then(|| parts.join("; ").into());
    }
}

/// The `SET` that `sql` is, when pgrouter can replay it: one plain `SET
/// [SESSION] name {TO | =} value [, ...]`, `SET TIME ZONE`, `SET NAMES`.
/// `None` for anything else (SET LOCAL, a role or session authorization in
/// any spelling, `pgrouter.route`, text that does not parse), which pins.
pub fn replayable_set(sql: &str) -> Option<Setting> {
    if sql.len() > MAX_REPLAYED_SET {
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Set(set)] = statements.as_slice() else {
        return None;
    };
    match set {
        Set::SingleAssignment {
            scope: None | Some(ContextModifier::Session),
            hivevar: false,
            variable,
            values,
        } if !values.is_empty() => {
            let name = parameter_name(variable)?;
            if matches!(
                name.as_str(),
                "role" | "session_authorization" | "pgrouter.route"
            ) {
                return None;
            }
            let values: Vec<String> = values.iter().map(ToString::to_string).collect();
            Some(Setting {
                statement: format!("SET {variable} TO {}", values.join(", ")),
                name,
            })
        }
        Set::SetTimeZone {
            local: false,
            value,
        } => Some(Setting {
            name: "timezone".into(),
            statement: format!("SET TIME ZONE {value}"),
        }),
        Set::SetNames {
            charset_name,
            collation_name: None,
        } => Some(Setting {
            name: "client_encoding".into(),
            statement: format!("SET NAMES {charset_name}"),
        }),
        _ => None,
    }
}

/// A parameter's name as PostgreSQL folds it: `Work_Mem` and `"work_mem"`
/// are `work_mem`, `a.B` is `a.b`.
fn parameter_name(variable: &ObjectName) -> Option<String> {
    let parts: Option<Vec<String>> = variable
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => {
                Some(ident.value.clone())
            }
            ObjectNamePart::Identifier(ident) => Some(ident.value.to_lowercase()),
            ObjectNamePart::Function(_) => None,
        })
        .collect();
    let name = parts?.join(".");
    (!name.is_empty()).then_some(name)
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
        [reset, name]
            if reset.eq_ignore_ascii_case("reset")
                && name
                    .trim_matches('"')
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.') =>
        {
            let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => quoted.to_owned(),
                None => name.to_ascii_lowercase(),
            };
            (!matches!(name.as_str(), "role" | "session_authorization")).then_some(Some(name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(sql: &str) -> Option<String> {
        replayable_set(sql).map(|setting| setting.name)
    }

    #[test]
    fn replayable_sets_are_recognised() {
        assert_eq!(
            name("SET search_path TO a, b").as_deref(),
            Some("search_path")
        );
        assert_eq!(
            name("set session Work_Mem = '8MB'").as_deref(),
            Some("work_mem")
        );
        assert_eq!(
            name("SET statement_timeout='1s'").as_deref(),
            Some("statement_timeout")
        );
        assert_eq!(
            name("SET \"work_mem\" TO '3MB'").as_deref(),
            Some("work_mem")
        );
        assert_eq!(name("SET TIME ZONE 'UTC'").as_deref(), Some("timezone"));
        assert_eq!(name("SET my.Setting = 1").as_deref(), Some("my.setting"));
        assert_eq!(name("SET LOCAL work_mem = '1MB'"), None);
        assert_eq!(name("SET ROLE admin"), None);
        assert_eq!(name("SET role='admin'"), None);
        assert_eq!(name("SET \"role\" TO admin"), None);
        assert_eq!(name("SET SESSION AUTHORIZATION bob"), None);
        assert_eq!(name("SET session_authorization = bob"), None);
        assert_eq!(name("SET pgrouter.route = primary"), None);
        assert_eq!(name("SET a = 1; SET b = 2"), None);
        assert_eq!(reset_parameter("RESET ALL"), Some(None));
        assert_eq!(
            reset_parameter("reset work_mem;"),
            Some(Some("work_mem".into()))
        );
        assert_eq!(reset_parameter("RESET role"), None);
        assert_eq!(reset_parameter("RESET work_mem -- note"), None);
    }

    #[test]
    fn a_replayed_set_is_rebuilt_without_what_followed_it() {
        let setting = replayable_set("SET a.b = 1 -- note").expect("replayable");
        assert_eq!(setting.statement, "SET a.b TO 1");
        let setting = replayable_set("SET search_path = evil, public;").expect("replayable");
        assert_eq!(setting.statement, "SET search_path TO evil, public");
    }

    #[test]
    fn settings_combine_and_later_sets_win() {
        let mut settings = SessionSettings::new(Some("SELECT set_config('a', 'b', false)".into()));
        let set = |sql| replayable_set(sql).expect("replayable");
        settings.set(set("SET work_mem = '1MB';"));
        settings.set(set("SET search_path TO x"));
        settings.set(set("SET a.b = 1 -- note"));
        settings.set(set("SET work_mem = '2MB'"));
        assert_eq!(
            settings.query().as_deref(),
            Some(
                "SELECT set_config('a', 'b', false); SET search_path TO x; SET a.b TO 1; \
                 SET work_mem TO '2MB'"
            )
        );
        settings.reset(Some("a.b"));
        settings.reset(None);
        assert_eq!(
            settings.query().as_deref(),
            Some("SELECT set_config('a', 'b', false)")
        );
    }
}
