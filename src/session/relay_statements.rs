//! Client messages that name a prepared statement, rewritten for the
//! server connection (see `Relay::rewrite_statement_message`), and the
//! session effect of what the client sends inside a request.

use super::{pin, Progress, Relay, CLOSED_STATEMENT};
use crate::protocol::extended;
use crate::protocol::frontend::{self, Frame, BIND, CLOSE, FLUSH, PARSE};
use crate::protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncWrite};

impl<C: AsyncRead + AsyncWrite + Unpin> Relay<'_, C> {
    /// Pins the client when a statement it sends inside a transaction
    /// creates session state (the first statement of a request was
    /// checked when it was routed).
    pub(super) fn session_effect(&self, message: &[u8]) -> pin::SessionEffect {
        if message.first() == Some(&BIND) {
            let class = extended::statement_name(message)
                .and_then(|name| self.statements.get(name))
                .and_then(|statement| statement.class.as_ref());
            return class.map_or(pin::SessionEffect::None, |class| pin::effect(class, None));
        }
        let text = frontend::query_bytes(message).filter(|text| pin::may_change_session(text));
        match text.and_then(|text| std::str::from_utf8(text).ok()) {
            Some(sql) => pin::effect(&self.router.classify(sql), Some(sql)),
            None => pin::SessionEffect::None,
        }
    }

    /// Rewrites the message at the front of `client_in`, which names a
    /// prepared statement, into `server_out`. Returns false when the
    /// server must first be given the statement (the message stays).
    pub(super) fn rewrite_statement_message(
        &mut self,
        frame: Frame,
        p: &mut Progress,
    ) -> Result<bool, ProtocolError> {
        let message = &self.client_in[..frame.len];
        let held = &mut self.server.statements;
        match frame.tag {
            PARSE => {
                let parse = extended::parse(message)?;
                let router = self.router;
                let statement = self.registry.intern(parse.query, parse.types, || {
                    router.classify_bytes(parse.query)
                })?;
                self.statements.insert(parse.name, statement.clone());
                if held.contains(&statement.server_name) {
                    // The server has it: a Parse of the unnamed statement
                    // gets the client its ParseComplete and creates nothing.
                    extended::parse_message(self.server_out, "", parse.query, parse.types);
                } else {
                    extended::rename_statement(self.server_out, message, &statement.server_name)?;
                }
                held.touch(&statement.server_name);
            }
            CLOSE => {
                if let Some(name) = extended::statement_name(message) {
                    self.statements.remove(name);
                }
                extended::close_statement(self.server_out, CLOSED_STATEMENT);
            }
            _ => {
                let statement = extended::statement_name(message)
                    .and_then(|name| self.statements.get(name))
                    .cloned();
                let Some(statement) = statement else {
                    // Unknown to this client: the server answers 26000, as
                    // PostgreSQL would.
                    self.server_out.extend_from_slice(message);
                    return Ok(true);
                };
                // A statement whose Parse may yet be skipped is used only
                // once that is known.
                let unsettled = p.inline.is_pending_for(&statement.server_name);
                if unsettled || !held.contains(&statement.server_name) {
                    let at_rest = self.server.state.at_rest();
                    if p.inline.is_pending() {
                        // One at a time: have the server answer the last.
                        if !at_rest && !std::mem::replace(&mut p.inline_flushed, true) {
                            self.server_out.extend_from_slice(&[FLUSH, 0, 0, 0, 4]);
                            self.server.state.on_client_message(FLUSH);
                        }
                        return Ok(false);
                    }
                    if at_rest {
                        p.prepare = Some(statement);
                        return Ok(false);
                    }
                    // Inside an open batch there is no quiet moment to
                    // prepare in: it goes along, and its ParseComplete is
                    // cut (see `InlineParse`).
                    let position = self.server.state.parse_position();
                    let received = self.server.read_buf.len();
                    if p.inline
                        .push(statement.server_name.clone(), position, received)
                    {
                        self.server_out.extend_from_slice(&statement.parse);
                        self.server.state.on_client_message(PARSE);
                        self.server.statements.touch(&statement.server_name);
                    }
                } else {
                    self.server.statements.touch(&statement.server_name);
                }
                extended::rename_statement(self.server_out, message, &statement.server_name)?;
                if frame.tag == BIND {
                    p.last_bound = Some(statement);
                }
            }
        }
        Ok(true)
    }
}
