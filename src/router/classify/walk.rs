//! The AST visitor run over every query that executes (the statement's own
//! query, the query of COPY TO, DECLARE, CREATE TABLE AS, EXPLAIN ANALYZE):
//! it finds what makes a query more than a read at ANY depth (CTEs,
//! subqueries in FROM / WHERE / the select list, set operation arms,
//! LATERAL...) and collects the functions it calls.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArguments, ObjectName, Query, Select, SetExpr, Statement,
    TableFactor, Visit, Visitor,
};

use super::functions::classify_call;
use super::MAX_EXPR_DEPTH;

/// What running a piece of SQL does beyond reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Read,
    /// Changes session state (and so must run on the primary).
    Session(&'static str),
    /// Writes, locks or otherwise needs the primary.
    Write(&'static str),
    /// Nested deeper than [`MAX_EXPR_DEPTH`]: not walked to the end.
    TooDeep,
}

impl Effect {
    fn rank(self) -> u8 {
        match self {
            Effect::Read => 0,
            Effect::Session(_) => 1,
            Effect::Write(_) => 2,
            Effect::TooDeep => 3,
        }
    }

    /// The stronger of the two; on a tie the first one (`self`) is kept.
    pub(super) fn max(self, other: Effect) -> Effect {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// Walks `query` (and everything under it): its effect, with the names of
/// the functions it calls appended to `functions`.
pub(super) fn walk_query(query: &Query, functions: &mut Vec<Box<str>>) -> Effect {
    let mut walker = Walker {
        effect: Effect::Read,
        functions,
        depth: 0,
    };
    // The walker breaks only when the query is too deep (every function is
    // collected otherwise).
    if query.visit(&mut walker).is_break() {
        return Effect::TooDeep;
    }
    walker.effect
}

struct Walker<'f> {
    effect: Effect,
    functions: &'f mut Vec<Box<str>>,
    /// Expressions entered and not yet left.
    depth: usize,
}

impl Walker<'_> {
    fn note(&mut self, effect: Effect) {
        self.effect = self.effect.max(effect);
    }

    fn call(&mut self, name: &ObjectName, args: &[FunctionArg]) {
        let call = classify_call(name, args);
        self.note(call.effect);
        if let Some(listed) = call.listed {
            self.functions.push(listed);
        }
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            if with.cte_tables.iter().any(|cte| is_dml(&cte.query.body)) {
                self.note(Effect::Write("data-modifying cte"));
            }
        }
        if !query.locks.is_empty() {
            self.note(Effect::Write("locking clause"));
        }
        // FOR XML / FOR JSON / FOR BROWSE: not PostgreSQL; fail closed.
        if query.for_clause.is_some() {
            self.note(Effect::Write("other"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        match &select.into {
            // Creates a temporary table: session state, like CREATE TEMP TABLE.
            Some(into) if into.temporary => self.note(Effect::Session("select into temp")),
            Some(_) => self.note(Effect::Write("select into")),
            None => {}
        }
        ControlFlow::Continue(())
    }

    /// A statement inside a query is a data-modifying one (a CTE's or the
    /// body of `WITH ... INSERT`); CTEs were already labelled by the query.
    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.note(Effect::Write(match statement {
            Statement::Insert(_) => "insert",
            Statement::Update(_) => "update",
            Statement::Delete(_) => "delete",
            Statement::Merge(_) => "merge",
            _ => "other",
        }));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(());
        }
        if let Expr::Function(function) = expr {
            let args = match &function.args {
                FunctionArguments::List(list) => list.args.as_slice(),
                FunctionArguments::None | FunctionArguments::Subquery(_) => &[],
            };
            self.call(&function.name, args);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    /// Functions in FROM: `FROM f()`, `LATERAL f(x)`.
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => self.call(name, &args.args),
            TableFactor::Function { name, args, .. } => self.call(name, args),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// A query body that modifies data.
fn is_dml(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::Query(query) => is_dml(&query.body),
        _ => false,
    }
}
