//! The console's commands: words, not SQL, so they are read by hand.

use super::show;
use super::{Answer, Refusal};
use crate::control::Control;
use crate::protocol::backend::sqlstate;
use crate::router::explain::{explain_route, explained, COLUMNS as EXPLAIN_COLUMNS};
use crate::router::SessionRoute;
use crate::router::SessionWrites;

const SYNTAX_ERROR: &str = "42601";

const HELP: &[(&str, &str)] = &[
    (
        "SHOW POOLS",
        "clients and server connections per database and user",
    ),
    ("SHOW CLIENTS", "every connected client"),
    ("SHOW SERVERS", "every server connection"),
    ("SHOW NODES", "role, health, lag and ban of every node"),
    (
        "SHOW STATS",
        "queries, transactions, bytes and times per pool",
    ),
    ("SHOW CONFIG", "the configuration in force"),
    (
        "SHOW CACHES",
        "what each bounded structure holds, and its bound",
    ),
    ("SHOW VERSION", "pgrouter's version"),
    (
        "PAUSE [db]",
        "wait for running transactions, then hold new ones",
    ),
    ("RESUME [db]", "let held transactions go on"),
    ("RELOAD", "re-read the configuration file"),
    ("SHUTDOWN", "stop, letting running transactions finish"),
    (
        "EXPLAIN ROUTE <sql>",
        "where a statement would run, and why",
    ),
];

pub async fn run(control: &Control, text: &str) -> Result<Answer, Refusal> {
    let text = text.trim().trim_end_matches(';').trim();
    if let Some(statement) = explained(text) {
        let shared = control.current();
        let session = SessionRoute {
            setting: crate::config::Route::Auto,
            read_only_default: false,
            writes: SessionWrites::default(),
        };
        let mode = shared.config.pool.mode;
        let row = explain_route(
            &shared.router,
            statement,
            &session,
            std::net::Ipv4Addr::LOCALHOST.into(),
            mode,
        )
        .await;
        let mut answer = Answer::rows(&EXPLAIN_COLUMNS, vec![row.map(Some).to_vec()]);
        answer.tag = "EXPLAIN".into();
        return Ok(answer);
    }
    let words: Vec<String> = text.split_whitespace().map(str::to_uppercase).collect();
    let argument = text.split_whitespace().nth(1);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => Ok(Answer::done("EMPTY")),
        ["SHOW", "HELP"] => Ok(help()),
        ["SHOW", what] => show::show(control, what).ok_or_else(|| unknown(text)),
        ["SHOW"] => Ok(help()),
        ["HELP"] => Ok(help()),
        ["PAUSE"] | ["PAUSE", _] => {
            let database = argument.map(unquote);
            check_database(control, database.as_deref())?;
            control.pause(database.as_deref()).await;
            Ok(Answer::done("PAUSE"))
        }
        ["RESUME"] | ["RESUME", _] => {
            let database = argument.map(unquote);
            check_database(control, database.as_deref())?;
            control.resume(database.as_deref());
            Ok(Answer::done("RESUME"))
        }
        ["RELOAD"] => match control.reload().await {
            Ok(changes) => {
                let mut answer = Answer::done("RELOAD");
                answer.notice = Some(format!("configuration reloaded: {changes}"));
                Ok(answer)
            }
            Err(errors) => Err(Refusal {
                code: sqlstate::CONFIG_FILE_ERROR,
                message: format!("configuration not reloaded, the old one stays:\n{errors}"),
            }),
        },
        ["SHUTDOWN"] => {
            control.shutdown_requested.notify_one();
            Ok(Answer::done("SHUTDOWN"))
        }
        _ => Err(unknown(text)),
    }
}

fn unknown(text: &str) -> Refusal {
    Refusal {
        code: SYNTAX_ERROR,
        message: format!("unknown admin command {text:?}; SHOW HELP lists the commands"),
    }
}

fn help() -> Answer {
    let rows = HELP
        .iter()
        .map(|(command, what)| vec![Some((*command).to_owned()), Some((*what).to_owned())])
        .collect();
    Answer::rows(&["command", "description"], rows)
}

fn unquote(word: &str) -> String {
    let word = word.trim_end_matches(';');
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(quoted) => quoted.to_owned(),
        None => word.to_owned(),
    }
}

fn check_database(control: &Control, database: Option<&str>) -> Result<(), Refusal> {
    match database {
        Some(db) if control.current().config.database(db).is_none() => Err(Refusal {
            code: sqlstate::INVALID_CATALOG_NAME,
            message: format!("database \"{db}\" does not exist"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::unquote;

    #[test]
    fn database_names_may_be_quoted() {
        assert_eq!(unquote("\"My Db\""), "My Db");
        assert_eq!(unquote("app;"), "app");
    }
}
