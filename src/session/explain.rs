//! `EXPLAIN ROUTE` answered on a client's connection (see
//! `router::explain`), as a simple query or through the extended protocol
//! on the unnamed statement.

use super::serve::{End, Session};
use crate::protocol::backend;
use crate::protocol::extended;
use crate::protocol::frontend::{self, Frame};
use crate::router::explain::{explain_route, explained, COLUMNS};
use bytes::{Buf, BytesMut};

impl Session {
    /// Answers `EXPLAIN ROUTE` sent through the extended protocol on the
    /// unnamed statement (Parse, Bind, Describe, Execute, Sync in one
    /// batch, as JDBC, psycopg and tokio-postgres' `query_typed` send a
    /// one-off query); returns whether the request was one. A named
    /// statement goes to the server like any other.
    pub(super) async fn explain_batch(&mut self, first: Frame) -> Result<bool, End> {
        let statement = match extended::parse(&self.in_buf[..first.len]) {
            Ok(parse) if parse.name.is_empty() => {
                match std::str::from_utf8(parse.query).ok().and_then(explained) {
                    Some(statement) => statement.to_owned(),
                    None => return Ok(false),
                }
            }
            _ => return Ok(false),
        };
        let row = explain_route(
            &self.shared.router,
            &statement,
            &self.route,
            self.peer.ip(),
            self.mode,
        )
        .await;
        self.in_buf.advance(first.len);
        let mut out = BytesMut::new();
        backend::parse_complete(&mut out);
        loop {
            let frame = match self.next_request().await {
                Ok(frame) => frame,
                Err(crate::client::ClientError::Protocol(error)) => {
                    return Err(End::Protocol(error.to_string()))
                }
                Err(_) => return Err(End::Gone),
            };
            let message = self.in_buf.split_to(frame.len);
            match frame.tag {
                frontend::BIND => backend::bind_complete(&mut out),
                frontend::DESCRIBE => {
                    if frontend::body(&message).first() == Some(&b'S') {
                        backend::no_parameters(&mut out);
                    }
                    backend::row_description(&mut out, &COLUMNS);
                }
                frontend::EXECUTE => {
                    backend::data_row(&mut out, &row.clone().map(Some));
                    backend::command_complete(&mut out, "EXPLAIN");
                }
                frontend::CLOSE => backend::close_complete(&mut out),
                frontend::FLUSH => {
                    self.write(&out).await?;
                    out.clear();
                }
                frontend::SYNC => break,
                frontend::TERMINATE => return Err(End::Terminated),
                _ => {}
            }
        }
        let status = self.stage.transaction().status();
        backend::ready_for_query(&mut out, status);
        self.write(&out).await?;
        Ok(true)
    }

    /// Answers `EXPLAIN ROUTE`; returns whether the request was one.
    pub(super) async fn explain_locally(&mut self, first: Frame) -> Result<bool, End> {
        let message = &self.in_buf[..first.len];
        let Some(statement) = frontend::query_text(message).and_then(explained) else {
            return Ok(false);
        };
        let row = explain_route(
            &self.shared.router,
            statement,
            &self.route,
            self.peer.ip(),
            self.mode,
        )
        .await;
        self.in_buf.advance(first.len);
        let status = self.stage.transaction().status();
        let mut out = BytesMut::new();
        backend::row_description(&mut out, &COLUMNS);
        backend::data_row(&mut out, &row.map(Some));
        backend::command_complete(&mut out, "EXPLAIN");
        backend::ready_for_query(&mut out, status);
        self.write(&out).await?;
        Ok(true)
    }
}
