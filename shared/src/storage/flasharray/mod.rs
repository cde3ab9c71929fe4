//! Pure Storage FlashArray and Cloud Block Store over REST 2.x.
//!
//! | where | what |
//! | --- | --- |
//! | [`client`] | TLS, version negotiation, login/logout, paging, retries, the operations |
//! | [`model`] | the response and request shapes we use, named as in the official spec |
//! | [`backend`] | [`crate::storage::Backend`] for an array, protection group replication |
//!
//! The client is checked against the official OpenAPI spec by the double in
//! `tests/doubles/flasharray.py` (`shared/tests/flasharray.rs`).

pub mod backend;
pub mod client;
pub mod model;

pub use backend::{
    FlashArray, ReplicaSource, check_volume_name, snapshot_suffix, staging_volume_name,
};
pub use client::{ApiToken, ApiVersion, Client, Config, Retry, Session};
