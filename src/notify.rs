//! Change notifications: the channel and payload LISTENing clients rely on.
//!
//! Every transaction that appends to, closes or deletes a stream sends, at
//! commit, one notification per change on channel [`CHANNEL`]:
//! `<tail offset> <path>` when the stream advanced or closed, `- <path>`
//! when it was deleted. A notification is only a hint: readers always re-read
//! from their own offset.

/// The channel: `LISTEN durable_streams`.
pub const CHANNEL: &str = "durable_streams";

/// Payload announcing a stream's new tail.
pub fn advanced(path: &str, tail: ds_core::Offset) -> String {
    format!("{tail} {path}")
}

/// Payload announcing a deletion.
pub fn deleted(path: &str) -> String {
    format!("- {path}")
}
