//! pgrouter: a PostgreSQL connection pooler and read/write router.
//!
//! Data flows one way, and so do the imports:
//!
//! ```text
//! client socket -> listener -> session ----> client   (startup, auth)
//!                                 |  \-----> router   (which node)
//!                                 |  \-----> pool     (a server connection) -> server
//!                                 \--- relay: client bytes <-> server bytes
//! ```
//!
//! `protocol` is a pure codec both directions use; `config` and `auth` hold
//! no I/O. See docs/ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod clients;
pub mod config;
pub mod control;
pub mod demo;
pub mod listener;
pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod stats;
pub mod topology;
