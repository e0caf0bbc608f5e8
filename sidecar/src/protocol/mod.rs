//! Pure protocol helpers of the sidecar: header syntax, query parameters,
//! cursors, ETags and SSE framing.
//!
//! Nothing here does I/O or knows about the database; every function is a
//! plain transformation with unit tests beside it. Stream semantics (what an
//! append means, how offsets are minted) live in `ds-core` and the extension.

pub mod cursor;
pub mod etag;
pub mod headers;
pub mod query;
pub mod sse;
pub mod time;
