//! Pure protocol logic of durable_streams.
//!
//! Everything here is deterministic and free of Postgres and async runtimes so
//! that the extension (which stores streams) and the sidecar (which speaks
//! HTTP) share one definition of the Durable Streams rules and can be tested
//! with plain `cargo test`.
#![forbid(unsafe_code)]

pub mod acl;
pub mod content_type;
pub mod deferred;
pub mod doorbell;
pub mod error;
pub mod json;
pub mod limits;
pub mod notification;
pub mod offset;
pub mod outcome;
pub mod producer;
pub mod registry;
pub mod retention;
pub mod segment;
pub mod state_change;
pub mod subscription;
pub mod webhook_url;

pub use error::Error;
pub use offset::{Offset, ReadFrom};
