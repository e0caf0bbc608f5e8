//! The one error type of the pure layer: every way a request can be malformed.
//!
//! Each variant is a client mistake with a message that says what to fix. The
//! extension maps variants to SQLSTATEs in `src/error.rs`; nothing here knows
//! about SQL or HTTP.

use thiserror::Error;

/// A request that cannot be carried out as given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// Stream path empty, too long, or containing control characters.
    #[error("invalid stream path: {0}")]
    InvalidPath(String),
    /// Content type not of the form `type/subtype[; params]`.
    #[error("invalid content type {0:?}: expected \"type/subtype\", e.g. \"application/json\"")]
    InvalidContentType(String),
    /// Offset that is neither a server-issued offset nor `-1` / `now`.
    #[error("invalid offset {0:?}: use -1, now, or an offset previously returned by the server")]
    InvalidOffset(String),
    /// TTL negative or otherwise unusable.
    #[error("invalid ttl_seconds {0}: must be a non-negative whole number of seconds")]
    InvalidTtl(i64),
    /// TTL beyond [`crate::limits::MAX_TTL_SECONDS`].
    #[error(
        "ttl_seconds {0} exceeds the maximum of {max} seconds (100 years)",
        max = crate::limits::MAX_TTL_SECONDS
    )]
    TtlTooLarge(i64),
    /// `expires_at` infinite or after the last RFC 3339 instant.
    #[error("expires_at must be a finite time no later than 9999-12-31T23:59:59Z")]
    ExpiresAtTooLate,
    /// Both a sliding TTL and an absolute expiry were given.
    #[error("give either ttl_seconds or expires_at, not both")]
    TtlWithExpiresAt,
    /// Body of a JSON stream is not valid JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// JSON nested deeper than the configured maximum (counted as a read
    /// returns it: the array a read wraps messages in is one level).
    #[error(
        "JSON nesting depth exceeds the maximum of {max} levels (ds.json_max_depth, counted as \
         read back: a read wraps messages in one array)"
    )]
    JsonTooDeep { max: usize },
    /// More messages in one body than the configured maximum.
    #[error("body holds more than {max} JSON messages (ds.max_messages_per_append)")]
    TooManyMessages { max: usize },
    /// `[]` appended to a JSON stream: a no-op that is almost always a bug.
    #[error("empty JSON array appended: send at least one message")]
    EmptyJsonArray,
    /// Body of a `text/*` or JSON stream is not UTF-8.
    #[error("body is not valid UTF-8 (stream content type {0} is textual)")]
    InvalidUtf8(String),
    /// Body larger than the configured maximum.
    #[error("body of {size} bytes exceeds the maximum of {max} bytes (ds.max_append_bytes)")]
    BodyTooLarge { size: usize, max: usize },
    /// Empty append without a close request.
    #[error("empty append: send a non-empty body, or close the stream")]
    EmptyAppend,
    /// Fork offset or sub-offset that does not name a position of the source.
    #[error("invalid fork point: {0}")]
    InvalidFork(String),
    /// A stored segment whose framing is broken (never a client mistake).
    #[error("corrupt segment: bad frame at byte {0}")]
    CorruptSegment(usize),
    /// A grant pattern or privilege list that cannot be used.
    #[error("invalid grant: {0}")]
    InvalidGrant(String),
    /// A stream registry prefix that cannot be used (see `registry`).
    #[error("invalid registry: {0}")]
    InvalidRegistry(String),
    /// A quota limit that cannot be used.
    #[error("invalid quota: {0}")]
    InvalidQuota(String),
    /// Producer id/epoch/seq incomplete or out of range.
    #[error("invalid producer arguments: {0}")]
    InvalidProducer(String),
    /// Arguments of a SQL function that do not fit together (NULL where an
    /// array is needed, arrays of different lengths).
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
}

pub type Result<T> = std::result::Result<T, Error>;
