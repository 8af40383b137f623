//! The integration tests, one binary (each binary links the whole crate again): against a real
//! PostgreSQL (`DATABASE_URL`, which `make test` points at the local cluster), each `#[sqlx::test]` in a
//! database of its own.
//!
//! Tests build catalog queries, fixtures and hostile statements at run time, which the crate itself
//! may not (clippy.toml): allowed here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod clerk;
mod common;
mod held;
mod local_cluster;
mod locks;
mod lookup;
mod migrations;
mod pgbouncer;
mod prepared;
mod replicas;
mod restart;
mod roles;
mod squawk;
mod support;
mod users;
#[cfg(feature = "webhook-service")]
mod webhook;
#[cfg(feature = "webhook-service")]
mod webhook_process;

// These run the operator command, built with the `cli` feature.
#[cfg(feature = "cli")]
mod import;
#[cfg(feature = "cli")]
mod sandbox;
