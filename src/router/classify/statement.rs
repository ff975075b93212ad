//! The verdict for one parsed statement. Anything not explicitly recognised
//! here is a write (`Write("other")`): the classifier fails closed.

use sqlparser::ast::{
    ContextModifier, CopySource, CopyTarget, Declare, DeclareType, Expr, ObjectName,
    ObjectNamePart, Set, Statement, TransactionAccessMode, TransactionIsolationLevel,
    TransactionMode, Value,
};

use super::walk::{walk_query, Effect};
use super::{Kind, RouteSetting};

/// Classifies `statement`, appending the functions its executed queries call.
pub(super) fn classify_statement(statement: &Statement, functions: &mut Vec<Box<str>>) -> Kind {
    use Statement as S;
    match statement {
        S::Query(query) => kind_of(walk_query(query, functions)),
        S::Insert(_) => Kind::Write("insert"),
        S::Update(_) => Kind::Write("update"),
        S::Delete(_) => Kind::Write("delete"),
        S::Merge(_) => Kind::Write("merge"),
        S::Copy {
            source, to, target, ..
        } => copy(source, *to, target, functions),
        S::Explain {
            analyze,
            options,
            statement,
            ..
        } => {
            let analyze = *analyze || options.iter().flatten().any(is_analyze_option);
            explain(statement, analyze, functions)
        }
        S::Declare { stmts, .. } => declare(stmts, functions),
        // Cursor use: the cursor lives on the connection that declared it,
        // which the transaction (or a WITH HOLD pin) already fixes.
        S::Fetch { .. } => Kind::Read,
        S::Close { .. } => Kind::TransactionControl,

        S::Set(set) => classify_set(set),
        S::Reset(_) => Kind::SessionState("reset"),
        S::StartTransaction {
            modes,
            statements,
            exception,
            modifier,
            ..
        } => {
            // A BEGIN ... END block (not PostgreSQL) or BEGIN DEFERRED & co.
            if !statements.is_empty() || exception.is_some() || modifier.is_some() {
                return Kind::Write("other");
            }
            let (access, serializable) = transaction_modes(modes);
            Kind::Begin {
                read_only: access == Some(TransactionAccessMode::ReadOnly) && !serializable,
            }
        }
        S::Commit { .. }
        | S::Rollback { .. }
        | S::Savepoint { .. }
        | S::ReleaseSavepoint { .. } => Kind::TransactionControl,

        S::ShowVariable { .. }
        | S::ShowVariables { .. }
        | S::ShowStatus { .. }
        | S::ShowFunctions { .. }
        | S::ShowCreate { .. }
        | S::ShowColumns { .. }
        | S::ShowCatalogs { .. }
        | S::ShowDatabases { .. }
        | S::ShowSchemas { .. }
        | S::ShowCharset(_)
        | S::ShowObjects(_)
        | S::ShowTables { .. }
        | S::ShowViews { .. }
        | S::ShowCollation { .. } => Kind::Read,

        S::LISTEN { .. } => Kind::SessionState("listen"),
        S::UNLISTEN { .. } => Kind::SessionState("unlisten"),
        S::NOTIFY { .. } => Kind::Write("notify"),
        S::Prepare { .. } => Kind::SessionState("prepare"),
        S::Execute { .. } => Kind::SessionState("execute"),
        S::Deallocate { .. } => Kind::SessionState("deallocate"),
        S::Discard { .. } => Kind::SessionState("discard"),
        S::Load { .. } => Kind::SessionState("load"),

        S::CreateTable(create) if create.temporary => match &create.query {
            Some(query) => match walk_query(query, functions) {
                Effect::Read | Effect::Session(_) => Kind::SessionState("create temp table"),
                effect => kind_of(effect),
            },
            None => Kind::SessionState("create temp table"),
        },
        S::CreateView(create) if create.temporary && !create.materialized => {
            Kind::SessionState("create temp view")
        }
        S::CreateSequence {
            temporary: true, ..
        } => Kind::SessionState("create temp sequence"),

        S::Call(_) => Kind::Write("call"),
        S::Lock(_) | S::LockTables { .. } => Kind::Write("lock"),
        S::Vacuum(_) => Kind::Write("vacuum"),
        S::Analyze(_) => Kind::Write("analyze"),
        S::Truncate(_) => Kind::Write("truncate"),
        S::Grant(_) | S::GrantRole(_) | S::Deny(_) | S::AlterDefaultPrivileges(_) => {
            Kind::Write("grant")
        }
        S::Revoke(_) | S::RevokeRole(_) => Kind::Write("revoke"),
        S::CreateTable(_)
        | S::CreateView(_)
        | S::CreateSequence { .. }
        | S::CreateIndex(_)
        | S::CreateRole(_)
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction(_)
        | S::CreateTrigger(_)
        | S::CreateProcedure { .. }
        | S::CreateType { .. }
        | S::CreateDomain(_)
        | S::CreateExtension(_)
        | S::CreatePolicy(_)
        | S::CreateServer(_)
        | S::CreateForeignTable(_)
        | S::CreateForeignDataWrapper(_)
        | S::CreateUserMapping(_)
        | S::CreateRule(_)
        | S::CreateOperator(_)
        | S::CreateOperatorFamily(_)
        | S::CreateOperatorClass(_)
        | S::CreateTextSearch(_)
        | S::CreateAggregate(_)
        | S::CreateCollation(_)
        | S::CreateUser(_)
        | S::AlterTable(_)
        | S::AlterSchema(_)
        | S::AlterIndex { .. }
        | S::AlterView(_)
        | S::AlterFunction(_)
        | S::AlterType(_)
        | S::AlterCollation(_)
        | S::AlterOperator(_)
        | S::AlterOperatorFamily(_)
        | S::AlterOperatorClass(_)
        | S::AlterTextSearch(_)
        | S::AlterRole { .. }
        | S::AlterPolicy(_)
        | S::AlterTrigger(_)
        | S::AlterUser(_)
        | S::Drop { .. }
        | S::DropFunction(_)
        | S::DropDomain(_)
        | S::DropProcedure { .. }
        | S::DropPolicy(_)
        | S::DropRule(_)
        | S::DropTrigger(_)
        | S::DropExtension(_)
        | S::DropOperator(_)
        | S::DropOperatorFamily(_)
        | S::DropOperatorClass(_)
        | S::Comment { .. }
        | S::RefreshMaterializedView(_) => Kind::Write("ddl"),

        // Fail closed: whatever was not recognised above.
        _ => Kind::Write("other"),
    }
}

pub(super) fn kind_of(effect: Effect) -> Kind {
    match effect {
        Effect::Read => Kind::Read,
        Effect::Session(reason) => Kind::SessionState(reason),
        Effect::Write(reason) => Kind::Write(reason),
        Effect::TooDeep => Kind::Unparsable,
    }
}

/// COPY ... FROM writes; COPY ... TO STDOUT reads (unless its query writes);
/// COPY ... TO a server file or program writes on the server it runs on.
fn copy(source: &CopySource, to: bool, target: &CopyTarget, functions: &mut Vec<Box<str>>) -> Kind {
    if !to {
        return Kind::Write("copy from");
    }
    if !matches!(target, CopyTarget::Stdout) {
        return Kind::Write("copy to file");
    }
    match source {
        CopySource::Table { .. } => Kind::Read,
        CopySource::Query(query) => kind_of(walk_query(query, functions)),
    }
}

/// DECLARE CURSOR: what its query does; WITH HOLD keeps the cursor (session
/// state) past the transaction.
fn declare(declares: &[Declare], functions: &mut Vec<Box<str>>) -> Kind {
    if declares.is_empty() {
        return Kind::Write("other");
    }
    let mut effect = Effect::Read;
    for declare in declares {
        effect = effect.max(match (&declare.declare_type, &declare.for_query) {
            (Some(DeclareType::Cursor), Some(query)) => {
                match (walk_query(query, functions), declare.hold) {
                    (Effect::Read, Some(true)) => Effect::Session("declare with hold"),
                    (effect, _) => effect,
                }
            }
            // Not a cursor: not PostgreSQL.
            _ => Effect::Write("other"),
        });
    }
    kind_of(effect)
}

/// Plain EXPLAIN only plans (Read; but EXPLAIN EXECUTE needs the session's
/// prepared statement). EXPLAIN ANALYZE runs the statement: a read stays a
/// read, anything else needs the primary.
fn explain(statement: &Statement, analyze: bool, functions: &mut Vec<Box<str>>) -> Kind {
    if !analyze {
        return match statement {
            Statement::Execute { .. } => Kind::SessionState("execute"),
            _ => Kind::Read,
        };
    }
    match classify_statement(statement, functions) {
        Kind::Read => Kind::Read,
        Kind::SessionState(reason) => Kind::SessionState(reason),
        Kind::Unparsable => Kind::Unparsable,
        _ => Kind::Write("explain analyze write"),
    }
}

/// `ANALYZE` (or `ANALYSE`) in `EXPLAIN (...)`, unless its value is
/// literally false.
fn is_analyze_option(option: &sqlparser::ast::UtilityOption) -> bool {
    let name = &option.name.value;
    if !(name.eq_ignore_ascii_case("analyze") || name.eq_ignore_ascii_case("analyse")) {
        return false;
    }
    let off = |s: &str| {
        ["false", "off", "0"]
            .iter()
            .any(|f| s.eq_ignore_ascii_case(f))
    };
    let is_off = match &option.arg {
        None => false,
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => !b,
            Value::Number(n, _) => off(n),
            Value::SingleQuotedString(s) => off(s),
            _ => false,
        },
        Some(Expr::Identifier(ident)) => off(&ident.value),
        Some(_) => false,
    };
    !is_off
}

/// The access mode given last, and whether SERIALIZABLE was asked for.
fn transaction_modes(modes: &[TransactionMode]) -> (Option<TransactionAccessMode>, bool) {
    let mut access = None;
    let mut serializable = false;
    for mode in modes {
        match mode {
            TransactionMode::AccessMode(mode) => {
                // READ ONLY and READ WRITE together: keep READ WRITE.
                if access != Some(TransactionAccessMode::ReadWrite) {
                    access = Some(*mode);
                }
            }
            TransactionMode::IsolationLevel(level) => {
                serializable |= *level == TransactionIsolationLevel::Serializable;
            }
        }
    }
    (access, serializable)
}

fn classify_set(set: &Set) -> Kind {
    match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let local = *scope == Some(ContextModifier::Local);
            if is_route_variable(variable) && !local {
                match route_setting(values) {
                    Some(setting) => Kind::SetRoute(setting),
                    // Not a route pgrouter knows: PostgreSQL takes it as a
                    // harmless placeholder setting.
                    None => Kind::SessionState("set"),
                }
            } else if local {
                // SET LOCAL lasts until the end of the transaction.
                Kind::TransactionControl
            } else {
                match identity_variable(variable) {
                    Some(what) => Kind::SessionState(what),
                    None => Kind::SessionState("set"),
                }
            }
        }
        Set::SetRole {
            context_modifier: Some(ContextModifier::Local),
            ..
        } => Kind::TransactionControl,
        Set::SetRole { .. } => Kind::SessionState("set role"),
        Set::SetSessionAuthorization(_) => Kind::SessionState("set session authorization"),
        Set::SetTimeZone { local: true, .. } => Kind::TransactionControl,
        Set::SetTimeZone { .. } => Kind::SessionState("set time zone"),
        Set::SetNames { .. } | Set::SetNamesDefault {} => Kind::SessionState("set names"),
        Set::SetTransaction { session: true, .. } => Kind::SessionState("session characteristics"),
        Set::SetTransaction { modes, .. } => match transaction_modes(modes) {
            (_, true) => Kind::Write("serializable"),
            (Some(TransactionAccessMode::ReadWrite), _) => Kind::Write("read write"),
            (Some(TransactionAccessMode::ReadOnly), _) => Kind::SetTransactionReadOnly,
            (None, false) => Kind::TransactionControl,
        },
        Set::ParenthesizedAssignments { .. }
        | Set::MultipleAssignments { .. }
        | Set::SetSessionParam(_) => Kind::SessionState("set"),
    }
}

/// `role` and `session_authorization` set as plain parameters (`SET
/// role = 'x'`, `SET "role" TO x`): they change who the session is, like
/// `SET ROLE` and `SET SESSION AUTHORIZATION`.
fn identity_variable(name: &ObjectName) -> Option<&'static str> {
    let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
        return None;
    };
    match ident.value.to_ascii_lowercase().as_str() {
        "role" => Some("set role"),
        "session_authorization" => Some("set session authorization"),
        _ => None,
    }
}

/// `pgrouter.route`, any case, quoted or not (setting names are
/// case-insensitive in PostgreSQL).
fn is_route_variable(name: &ObjectName) -> bool {
    let parts: Vec<&str> = name
        .0
        .iter()
        .filter_map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(ident.value.as_str()),
            ObjectNamePart::Function(_) => None,
        })
        .collect();
    name.0.len() == 2
        && matches!(parts.as_slice(), [a, b]
            if a.eq_ignore_ascii_case("pgrouter") && b.eq_ignore_ascii_case("route"))
}

fn route_setting(values: &[Expr]) -> Option<RouteSetting> {
    let [value] = values else {
        return None;
    };
    let word = match value {
        Expr::Identifier(ident) => ident.value.as_str(),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.as_str(),
            _ => return None,
        },
        _ => return None,
    };
    parse_route(word)
}

/// `primary`, `replica` or `auto`, any case.
pub(super) fn parse_route(word: &str) -> Option<RouteSetting> {
    [
        ("primary", RouteSetting::Primary),
        ("replica", RouteSetting::Replica),
        ("auto", RouteSetting::Auto),
    ]
    .into_iter()
    .find(|(name, _)| word.eq_ignore_ascii_case(name))
    .map(|(_, setting)| setting)
}
