//! Giving a server connection back: after a request, when it failed or
//! must not be reused, and when its client has gone (cancelled, drained,
//! rolled back, reset, or closed); and the login-time check of a client's
//! startup settings.

use super::pin;
use super::serve::{Session, CANCEL_TIMEOUT, CLEANUP_TIMEOUT};
use super::stage::Serving;
use crate::client::ClientError;
use crate::clients::ClientState;
use crate::config::PoolMode;
use crate::pool::{Pool, PoolSet, PooledServer};
use crate::protocol::backend::sqlstate;
use crate::server::{reset, AppliedSettings, ServerError};
use std::sync::Arc;

impl Session {
    pub(super) fn give_back(&mut self, server: PooledServer) {
        self.cancel.slot.set(None, None);
        self.cancel.slot.set_state(ClientState::Idle);
        Pool::release(server);
    }

    /// Closes the held server connection: it failed or may hold the
    /// leftovers of a request that is being run elsewhere (`retry`: the
    /// request is run again, once, and not guarded the second time).
    pub(super) fn drop_server(&mut self, retry: bool) {
        if let Some(Serving {
            mut server,
            request,
            ..
        }) = self.stage.stop_serving(retry)
        {
            self.shared
                .router
                .finished(request.decision.node, request.started);
            server.mark_broken();
            self.give_back(server);
        }
    }

    /// Gives back the server connection of a client that has gone: rolled
    /// back and, in session mode, reset; closed when that is not possible.
    pub(super) async fn cleanup(&mut self, abandoned: bool) {
        self.cancel.slot.set(None, None);
        let Some(Serving {
            mut server,
            request,
            pinned,
            pending_setting,
            ..
        }) = self.stage.stop_serving(false)
        else {
            return;
        };
        if pending_setting.is_some() {
            // A SET or RESET the client did not wait for may have run.
            server.settings = AppliedSettings::Unknown;
        }
        if abandoned && (server.state.awaiting_ready() || server.state.in_batch()) {
            // Nobody waits for what runs: stop it rather than let it run
            // on (and hold a backend) after the client has gone.
            let target = server.cancel_target().clone();
            match tokio::time::timeout(CANCEL_TIMEOUT, target.cancel()).await {
                Ok(Ok(())) => {
                    tracing::debug!(server = server.id(), "cancelled an abandoned request")
                }
                _ => tracing::info!(server = server.id(), "cannot cancel an abandoned request"),
            }
        }
        self.shared
            .router
            .finished(request.decision.node, request.started);
        if pinned.is_some_and(pin::changes_identity) {
            // Who the session is may outlive any reset query: the
            // connection is never handed on.
            tracing::debug!(
                server = server.id(),
                "closing a connection whose identity changed"
            );
            server.mark_broken();
            Pool::release(server);
            return;
        }
        // A pinned client left session state on its connection: it is
        // reset like a session-mode connection before anyone else gets it.
        let reset_query = match (self.mode, pinned) {
            (PoolMode::Session, _) | (_, Some(_)) => Some(server_reset_query(&self.pools)),
            (PoolMode::Transaction, None) => None,
        };
        let cleaned = tokio::time::timeout(
            CLEANUP_TIMEOUT,
            reset::clean(&mut server, reset_query.as_deref()),
        );
        match cleaned.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::info!(server = server.id(), %error, "closing server connection left dirty");
                server.mark_broken();
            }
            Err(_) => {
                tracing::warn!(server = server.id(), "server connection clean-up timed out");
                server.mark_broken();
            }
        }
        Pool::release(server);
    }
}

/// Checks a client's startup settings against a server once, as
/// PostgreSQL checks them at login: a value it refuses is a FATAL with its
/// SQLSTATE now, not an error on every request later.
pub(super) async fn validate_settings(
    pool: &Pool,
    settings: &Arc<str>,
    changes_identity: bool,
) -> Result<(), ClientError> {
    if pool.settings_validated(settings) {
        return Ok(());
    }
    let mut server = pool
        .checkout()
        .await
        .map_err(|error| ClientError::fatal(error.sqlstate(), error.to_string()))?;
    let applied = super::acquire::apply_settings(&mut server, &Some(settings.clone())).await;
    let outcome = match applied {
        Ok(()) => {
            pool.settings_accepted(settings);
            Ok(())
        }
        Err(ServerError::Rejected { code, message }) => {
            Err(ClientError::fatal_owned(code, message))
        }
        Err(error) => {
            server.mark_broken();
            Err(ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                error.to_string(),
            ))
        }
    };
    if changes_identity {
        // A role set at startup survives RESET ALL: the connection that
        // checked it is not handed on.
        server.mark_broken();
    }
    Pool::release(server);
    outcome
}

pub(super) fn server_reset_query(pools: &PoolSet) -> String {
    pools
        .nodes
        .first()
        .map(|pool| pool.settings.reset_query.clone())
        .unwrap_or_default()
}
