//! Single integration-test binary: one link step and one shared PostgreSQL
//! cluster for every test module. Add new test modules with `mod xyz;`.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod auth;
mod bounds;
mod cancel;
mod cli;
mod demo;
mod deploy;
mod differential;
mod drivers;
mod failover;
mod harness;
mod isolation;
mod lifecycle;
mod metrics;
mod pooling;
mod prepared;
mod queries;
mod request_drivers;
mod requests;
mod routing;
mod routing_lag;
mod session_state;
mod startup;
