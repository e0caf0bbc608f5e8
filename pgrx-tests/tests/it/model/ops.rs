//! The operations of the SQL model test: what proptest generates (`Op`,
//! with offsets as picks among those a client could hold), what is run
//! (`Call`, with concrete offsets, resolved against the model), and the
//! SQL text of a call, which is also what a failure prints.

use proptest::prelude::*;

use super::access;
use super::capture::{self, CapOp};
use super::retention;
use super::state::{Model, hex, off};

/// Streams per case: few, so operations keep meeting the same streams. A
/// case starts by creating the first `CREATED` of them (forks need free
/// paths, appends and reads existing streams).
pub const PATHS: usize = 5;
const CREATED: usize = 3;

/// The bodies operations send: JSON of each shape §9.1 names (value, array
/// to flatten, nested array, empty array), text that is not JSON, and none.
pub const BODIES: [&str; 10] = [
    "",
    "a",
    "hello",
    "42",
    "\"s\"",
    "{\"k\":1}",
    "[1,2]",
    "[]",
    "[[1],{\"x\":\"y\"}]",
    "not json",
];

const STREAM_SEQS: [&str; 4] = ["a", "b", "10", "9"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct {
    Bytes,
    Text,
    Json,
}

impl Ct {
    pub fn name(self) -> &'static str {
        match self {
            Ct::Bytes => "application/octet-stream",
            Ct::Text => "text/plain",
            Ct::Json => "application/json",
        }
    }
}

/// The three `ds.append` overloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    Bytea,
    Text,
    Jsonb,
}

/// A read's start: `-1`, `now`, or an offset picked from those the stream
/// has handed out (message starts and tail; for byte streams also inside a
/// message, and past the tail).
#[derive(Debug, Clone, Copy)]
pub enum From {
    Start,
    Now,
    Pick(u8),
}

/// A resolved read start.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Start,
    Now,
    Offset(u64),
}

impl At {
    pub fn resolve(self, tail: u64) -> u64 {
        match self {
            At::Start => 0,
            At::Now => tail,
            At::Offset(o) => o.min(tail),
        }
    }
    fn sql(self) -> String {
        match self {
            At::Start => "-1".to_owned(),
            At::Now => "now".to_owned(),
            At::Offset(o) => off(o),
        }
    }
}

/// One `ds.try_append` request (also one element of a batch).
#[derive(Debug, Clone)]
pub struct Req {
    pub p: usize,
    pub body: Vec<u8>,
    pub ct: Option<Ct>,
    pub stream_seq: Option<String>,
    /// (id number, epoch, seq): producer `p<id>`.
    pub producer: Option<(u8, i64, i64)>,
    pub close: bool,
}

impl Req {
    pub fn plain(p: usize, body: Vec<u8>) -> Req {
        Req { p, body, ct: None, stream_seq: None, producer: None, close: false }
    }
    pub fn close_only(p: usize) -> Req {
        Req { close: true, ..Req::plain(p, Vec::new()) }
    }
}

/// What proptest generates.
#[derive(Debug, Clone)]
pub enum Op {
    Create {
        p: usize,
        ct: Ct,
        ttl: Option<i64>,
        /// `expires_at` far in the future (with a TTL: refused).
        expires: bool,
        closed: bool,
        body: usize,
    },
    Append {
        p: usize,
        overload: Overload,
        body: usize,
    },
    TryAppend(Req),
    Batch(Vec<Req>),
    Close {
        p: usize,
    },
    Fork {
        p: usize,
        source: usize,
        at: Option<u8>,
        sub: i64,
    },
    Read {
        p: usize,
        from: From,
    },
    ReadChunk {
        p: usize,
        from: From,
    },
    Head {
        p: usize,
    },
    Delete {
        p: usize,
    },
    Rotate {
        p: usize,
    },
    Enqueue {
        p: usize,
        overload: Overload,
        body: usize,
    },
    /// `ds.set_retention` by bytes (`retention::MAX_BYTES[i]`).
    SetRetention {
        p: usize,
        max_bytes: usize,
    },
    /// Time passes beyond the stream's TTL or expiry time, and the server
    /// retires it (see `Call::Expire`).
    Expire {
        p: usize,
    },
    Grant {
        pattern: usize,
        privileges: u8,
    },
    Revoke {
        pattern: usize,
        privileges: u8,
    },
    /// The operation run as `access::ROLE`.
    AsRole(Box<Op>),
    /// A write of the case's captured table, or a capture call.
    Capture(CapOp),
}

/// What is run: an `Op` with concrete offsets and bodies.
#[derive(Debug, Clone)]
pub enum Call {
    Create {
        p: usize,
        ct: Ct,
        ttl: Option<i64>,
        expires: bool,
        closed: bool,
        body: Vec<u8>,
    },
    Append {
        p: usize,
        overload: Overload,
        body: Vec<u8>,
    },
    TryAppend(Req),
    Batch(Vec<Req>),
    Close {
        p: usize,
    },
    Fork {
        p: usize,
        source: usize,
        offset: Option<u64>,
        sub: i64,
    },
    Read {
        p: usize,
        from: At,
    },
    ReadChunk {
        p: usize,
        from: At,
    },
    Head {
        p: usize,
    },
    Delete {
        p: usize,
    },
    /// `ds.rotate` with every byte packed (see `SESSION`): reads after it
    /// must not change.
    Rotate {
        p: usize,
    },
    /// `ds.enqueue`; the test then waits until it is sequenced
    /// (`Call::settle_sql`), so later reads see it like an append.
    Enqueue {
        p: usize,
        overload: Overload,
        body: Vec<u8>,
    },
    SetRetention {
        p: usize,
        max_bytes: u64,
    },
    Expire {
        p: usize,
    },
    Grant {
        pattern: usize,
        privileges: u8,
    },
    Revoke {
        pattern: usize,
        privileges: u8,
    },
    AsRole(Box<Call>),
    Capture(CapOp),
}

/// Settings of the test's session: rotation packs everything, into small
/// segments, so reads cross segment and hot-row boundaries.
pub const SESSION: &str =
    "SET ds.hot_tail_bytes = 0; SET ds.segment_target_bytes = 16; SET ds.registry = on;";

fn path() -> impl Strategy<Value = usize> {
    0..PATHS
}

fn ct() -> impl Strategy<Value = Ct> {
    prop_oneof![Just(Ct::Bytes), Just(Ct::Text), Just(Ct::Json)]
}

fn from() -> impl Strategy<Value = From> {
    prop_oneof![Just(From::Start), Just(From::Now), any::<u8>().prop_map(From::Pick)]
}

fn req() -> impl Strategy<Value = Req> {
    (
        path(),
        0..BODIES.len(),
        prop::option::weighted(0.3, ct()),
        prop::option::weighted(0.3, prop::sample::select(&STREAM_SEQS[..])),
        // Mostly epoch 0 and low seqs: duplicates and retries, not only gaps.
        prop::option::weighted(
            0.4,
            (
                0u8..2,
                prop_oneof![4 => Just(0i64), 1 => 1i64..3],
                prop_oneof![3 => 0i64..2, 1 => 2i64..4],
            ),
        ),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(p, body, ct, seq, producer, close)| Req {
            p,
            body: BODIES[body].as_bytes().to_vec(),
            ct,
            stream_seq: seq.map(str::to_owned),
            producer,
            close,
        })
}

fn create(p: impl Strategy<Value = usize>) -> impl Strategy<Value = Op> {
    (
        p,
        ct(),
        prop::option::weighted(0.3, prop::sample::select(&[60i64, 3600][..])),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        0..BODIES.len(),
    )
        .prop_map(|(p, ct, ttl, expires, closed, body)| Op::Create {
            p,
            ct,
            ttl,
            expires,
            closed,
            body,
        })
}

fn overload() -> impl Strategy<Value = Overload> {
    prop_oneof![Just(Overload::Bytea), Just(Overload::Text), Just(Overload::Jsonb)]
}

/// A case: the first streams created, then random operations.
pub fn case() -> impl Strategy<Value = Vec<Op>> {
    let first: Vec<_> = (0..CREATED).map(|p| create(Just(p)).boxed()).collect();
    (first, prop::collection::vec(op(), 1..40)).prop_map(|(mut first, ops)| {
        first.extend(ops);
        first
    })
}

/// A case of change capture only, ending with a read of its stream.
pub fn capture_case() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(capture::op().prop_map(Op::Capture), 1..30).prop_map(|mut ops| {
        ops.push(Op::Capture(CapOp::Read));
        ops
    })
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => stream_op(),
        1 => path().prop_map(|p| Op::Expire { p }),
        2 => (access::pattern_index(), access::privileges())
            .prop_map(|(pattern, privileges)| Op::Grant { pattern, privileges }),
        1 => (access::pattern_index(), access::privileges())
            .prop_map(|(pattern, privileges)| Op::Revoke { pattern, privileges }),
        5 => stream_op().prop_map(|op| Op::AsRole(Box::new(op))),
    ]
}

/// The calls a role may make (path grants decide which it may).
fn stream_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => create(path()),
        4 => (path(), overload(), 0..BODIES.len())
            .prop_map(|(p, overload, body)| Op::Append { p, overload, body }),
        2 => (path(), overload(), 0..BODIES.len())
            .prop_map(|(p, overload, body)| Op::Enqueue { p, overload, body }),
        2 => (path(), 0..retention::MAX_BYTES.len())
            .prop_map(|(p, max_bytes)| Op::SetRetention { p, max_bytes }),
        4 => req().prop_map(Op::TryAppend),
        1 => prop::collection::vec(req(), 1..5).prop_map(Op::Batch),
        1 => path().prop_map(|p| Op::Close { p }),
        2 => (prop_oneof![1 => path(), 2 => CREATED..PATHS], path(),
              prop::option::weighted(0.7, any::<u8>()), 0i64..4)
            .prop_map(|(p, source, at, sub)| Op::Fork { p, source, at, sub }),
        2 => (path(), from()).prop_map(|(p, from)| Op::Read { p, from }),
        2 => (path(), from()).prop_map(|(p, from)| Op::ReadChunk { p, from }),
        1 => path().prop_map(|p| Op::Head { p }),
        1 => path().prop_map(|p| Op::Delete { p }),
        1 => path().prop_map(|p| Op::Rotate { p }),
    ]
}

/// An offset a client of stream `p` could hold, chosen by `pick`: one the
/// stream handed out, or (byte streams, SQL API) one inside a message or
/// past the tail (reads clamp it to the tail).
fn pick(model: &Model, p: usize, pick: u8, inside: bool) -> u64 {
    let Some(s) = model.stream(p) else { return u64::from(pick % 3) };
    let mut choices = s.boundaries();
    if inside && s.ct != Ct::Json {
        choices.extend(s.msgs.iter().filter(|m| m.data.len() > 1).map(|m| m.start + 1));
        choices.push(s.tail + 2);
    }
    choices[usize::from(pick) % choices.len()]
}

impl Op {
    pub fn resolve(&self, model: &Model) -> Call {
        let at = |p, f: &From| match f {
            From::Start => At::Start,
            From::Now => At::Now,
            From::Pick(x) => At::Offset(pick(model, p, *x, true)),
        };
        match self {
            Op::Create { p, ct, ttl, expires, closed, body } => Call::Create {
                p: *p,
                ct: *ct,
                ttl: *ttl,
                expires: *expires,
                closed: *closed,
                body: BODIES[*body].as_bytes().to_vec(),
            },
            Op::Append { p, overload, body } => {
                Call::Append { p: *p, overload: *overload, body: BODIES[*body].as_bytes().to_vec() }
            }
            Op::TryAppend(r) => Call::TryAppend(r.clone()),
            Op::Batch(rs) => Call::Batch(rs.clone()),
            Op::Close { p } => Call::Close { p: *p },
            Op::Fork { p, source, at, sub } => Call::Fork {
                p: *p,
                source: *source,
                offset: at.map(|x| pick(model, *source, x, false)),
                sub: *sub,
            },
            Op::Read { p, from } => Call::Read { p: *p, from: at(*p, from) },
            Op::ReadChunk { p, from } => Call::ReadChunk { p: *p, from: at(*p, from) },
            Op::Head { p } => Call::Head { p: *p },
            Op::Delete { p } => Call::Delete { p: *p },
            Op::Rotate { p } => Call::Rotate { p: *p },
            Op::Enqueue { p, overload, body } => Call::Enqueue {
                p: *p,
                overload: *overload,
                body: BODIES[*body].as_bytes().to_vec(),
            },
            Op::SetRetention { p, max_bytes } => {
                Call::SetRetention { p: *p, max_bytes: retention::MAX_BYTES[*max_bytes] }
            }
            Op::Expire { p } => Call::Expire { p: *p },
            Op::Grant { pattern, privileges } => {
                Call::Grant { pattern: *pattern, privileges: *privileges }
            }
            Op::Revoke { pattern, privileges } => {
                Call::Revoke { pattern: *pattern, privileges: *privileges }
            }
            Op::AsRole(op) => Call::AsRole(Box::new(op.resolve(model))),
            Op::Capture(op) => Call::Capture(op.clone()),
        }
    }
}

fn lit(s: &str) -> String {
    format!("'{s}'")
}

fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> String) -> String {
    v.as_ref().map_or("NULL".to_owned(), f)
}

fn bytea(data: &[u8]) -> String {
    format!("'{}'::bytea", hex(data))
}

fn array<T>(
    reqs: &[Req],
    ty: &str,
    f: impl Fn(&Req) -> Option<T>,
    show: impl Fn(T) -> String,
) -> String {
    let items: Vec<String> = reqs.iter().map(|r| f(r).map_or("NULL".to_owned(), &show)).collect();
    format!("ARRAY[{}]::{ty}[]", items.join(", "))
}

/// `expires_at` of streams created with one: far enough away that only
/// `Call::Expire` ends them.
const EXPIRES_AT: &str = "'2100-01-01 00:00:00+00'";

/// The argument of an `ds.append` / `ds.enqueue` overload.
fn argument(overload: Overload, body: &[u8]) -> String {
    let text = String::from_utf8(body.to_vec()).expect("bodies are ASCII");
    match overload {
        Overload::Bytea => bytea(body),
        Overload::Text => format!("{}::text", lit(&text)),
        Overload::Jsonb => format!("{}::jsonb", lit(&text)),
    }
}

impl Call {
    /// What to run after the call, in its own transaction, before the next
    /// one: an enqueue waits (at most 10 s) until the sequencer gave it its
    /// offsets.
    pub fn settle_sql(&self) -> Option<&'static str> {
        match self {
            Call::Enqueue { .. } => Some(
                "DO $$ BEGIN FOR i IN 1..1000 LOOP EXIT WHEN NOT EXISTS (SELECT FROM ds.pending); \
                 PERFORM pg_sleep(0.01); END LOOP; END $$;",
            ),
            Call::AsRole(call) => call.settle_sql(),
            _ => None,
        }
    }

    /// The statement, with stream `i` at `paths[i]`.
    pub fn sql(&self, paths: &[String]) -> String {
        let q = |p: &usize| lit(&paths[*p]);
        match self {
            Call::Create { p, ct, ttl, expires, closed, body } => format!(
                "SELECT created, next_offset, content_type, closed FROM ds.create({}, {}, \
                 ttl_seconds => {}, expires_at => {}, closed => {closed}, body => {});",
                q(p),
                lit(ct.name()),
                opt(ttl, i64::to_string),
                if *expires { EXPIRES_AT } else { "NULL" },
                bytea(body)
            ),
            Call::Append { p, overload, body } => {
                format!("SELECT ds.append({}, {});", q(p), argument(*overload, body))
            }
            Call::Enqueue { p, overload, body } => {
                format!("SELECT ds.enqueue({}, {});", q(p), argument(*overload, body))
            }
            Call::SetRetention { p, max_bytes } => {
                format!("SELECT ds.set_retention({}, NULL, {max_bytes});", q(p))
            }
            // The clock cannot be moved, so the stream's last access and
            // expiry time are; then a create at its path retires it (as the
            // maintenance worker would, at a moment a test cannot pick), and
            // the stream that create made is deleted again.
            Call::Expire { p } => format!(
                "UPDATE ds.streams SET last_access = now() - interval '1 day', \
                 expires_at = CASE WHEN expires_at IS NOT NULL THEN now() - interval '1 day' END \
                 WHERE path = {path} AND (ttl_seconds IS NOT NULL OR expires_at IS NOT NULL); \
                 SELECT count(*) FROM ds.streams s, \
                 LATERAL (SELECT ds.delete(s.path) FROM ds.create(s.path) c) retired \
                 WHERE s.path = {path} AND NOT s.soft_deleted \
                   AND (s.ttl_seconds IS NOT NULL OR s.expires_at IS NOT NULL);",
                path = q(p)
            ),
            Call::Grant { pattern, privileges } => format!(
                "SELECT ds.grant('{}', {}, {});",
                access::ROLE,
                lit(&access::pattern(*pattern, paths)),
                lit(&access::names(*privileges))
            ),
            Call::Revoke { pattern, privileges } => format!(
                "SELECT ds.revoke('{}', {}, {});",
                access::ROLE,
                lit(&access::pattern(*pattern, paths)),
                lit(&access::names(*privileges))
            ),
            // One implicit transaction: an error rolls the SET ROLE back too.
            Call::AsRole(call) => {
                format!("SET ROLE {}; {} RESET ROLE;", access::ROLE, call.sql(paths))
            }
            Call::TryAppend(r) => format!(
                "SELECT outcome, next_offset, closed, producer_epoch, producer_seq, expected_seq, \
                 received_seq, sqlstate FROM ds.try_append({}, {}, content_type => {}, \
                 stream_seq => {}, producer_id => {}, producer_epoch => {}, producer_seq => {}, \
                 close => {});",
                q(&r.p),
                bytea(&r.body),
                opt(&r.ct, |c| lit(c.name())),
                opt(&r.stream_seq, |s| lit(s)),
                opt(&r.producer, |(id, _, _)| lit(&format!("p{id}"))),
                opt(&r.producer, |(_, e, _)| e.to_string()),
                opt(&r.producer, |(_, _, s)| s.to_string()),
                r.close
            ),
            Call::Batch(rs) => format!(
                "SELECT idx, outcome, next_offset, closed, producer_epoch, producer_seq, \
                 expected_seq, received_seq, sqlstate FROM ds.try_append_batch({}, {}, {}, {}, \
                 {}, {}, {}, {});",
                array(rs, "text", |r| Some(paths[r.p].clone()), |s| lit(&s)),
                array(rs, "bytea", |r| Some(r.body.clone()), |b| lit(&hex(&b))),
                array(rs, "text", |r| r.ct, |c| lit(c.name())),
                array(rs, "text", |r| r.stream_seq.clone(), |s| lit(&s)),
                array(rs, "text", |r| r.producer.map(|(id, _, _)| format!("p{id}")), |s| lit(&s)),
                array(rs, "bigint", |r| r.producer.map(|(_, e, _)| e), |e| e.to_string()),
                array(rs, "bigint", |r| r.producer.map(|(_, _, s)| s), |s| s.to_string()),
                array(rs, "boolean", |r| Some(r.close), |c| c.to_string()),
            ),
            Call::Close { p } => format!("SELECT ds.close({});", q(p)),
            Call::Fork { p, source, offset, sub } => format!(
                "SELECT created, next_offset, content_type, closed FROM ds.fork({}, {}, \
                 fork_offset => {}, fork_sub_offset => {sub});",
                q(p),
                q(source),
                opt(offset, |o| lit(&off(*o)))
            ),
            Call::Read { p, from } => format!(
                "SELECT start_offset, next_offset, data FROM ds.read({}, {});",
                q(p),
                lit(&from.sql())
            ),
            Call::ReadChunk { p, from } => format!(
                "SELECT body, next_offset, up_to_date, closed, content_type \
                 FROM ds.read_chunk({}, {});",
                q(p),
                lit(&from.sql())
            ),
            Call::Head { p } => {
                format!(
                    "SELECT content_type, next_offset, closed, ttl_seconds, earliest_offset \
                     FROM ds.head({});",
                    q(p)
                )
            }
            Call::Delete { p } => format!("SELECT ds.delete({});", q(p)),
            Call::Rotate { p } => format!("SELECT count(*) FROM ds.rotate({});", q(p)),
            Call::Capture(op) => op.sql(paths),
        }
    }
}
