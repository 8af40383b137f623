//! What every test file shares (zero2prod's `helpers.rs`): running the project's scripts
//! ([`scripts`]), Clerk's records ([`clerk`]), and the webhook's signing ([`webhook`]).
pub mod clerk;
pub mod scripts;
#[cfg(feature = "webhook-service")]
pub mod webhook;

pub use scripts::{key_values, local_cluster_only, output_of, run_script, run_script_with, script};
