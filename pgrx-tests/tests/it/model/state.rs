//! The in-memory model of the SQL API, written from the protocol (§4 stream
//! model and forks, §5.1 create, §5.2 append and Stream-Seq, §5.2.1
//! producers, §5.3 close, §5.4 delete, §5.6 reads, §8 offsets, §9.1 JSON
//! mode) and from the SQL surface's documented choices where the protocol
//! leaves one open (marked "SQL API"). Offsets are byte positions: a stream's
//! tail is the number of bytes stored, each JSON message counting its
//! compact text. It never looks at the extension's code paths; it predicts
//! every result as the rows `simple_query` returns (text), or a SQLSTATE.

use std::collections::BTreeMap;

use super::access::{Grants, Privilege};
use super::ops::{Call, Ct, Overload, Req};
use super::registry::Change;
use super::retention::{self, NOT_RETAINED, Unit};

/// What one SQL statement gives: rows of text columns, or a SQLSTATE.
pub type Res = Result<Vec<Vec<Option<String>>>, String>;

/// SQLSTATEs the SQL API documents (README, tests/pg_regress/errors).
pub const INVALID_PARAMETER: &str = "22023";
pub const INVALID_TEXT: &str = "22P02";
pub const NOT_FOUND: &str = "42704";
pub const GONE: &str = "55006";
pub const CLOSED: &str = "55000";
pub const CONFLICT: &str = "42710";
pub const TYPE_MISMATCH: &str = "42804";
pub const FORBIDDEN: &str = "42501";

/// One stored message as a reader sees it (a byte stream's append is one).
#[derive(Debug, Clone)]
pub struct Msg {
    pub start: u64,
    pub data: Vec<u8>,
}

impl Msg {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Debug, Clone)]
pub struct Origin {
    pub source: usize,
    /// Which stream that was: the path may hold another one since.
    pub source_id: u64,
    pub offset: u64,
    pub sub: i64,
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub id: u64,
    pub ct: Ct,
    pub ttl: Option<i64>,
    /// Created with an expiry time (`expires_at`), or forked from one.
    pub expires: bool,
    /// Past its TTL or expiry time while soft-deleted (a live stream is
    /// retired instead): forks from it are refused as from no stream.
    pub expired: bool,
    pub closed: bool,
    pub msgs: Vec<Msg>,
    pub tail: u64,
    /// Where its own data starts (a fork's fork point; 0).
    pub own_start: u64,
    /// How its own data is stored, from the earliest retained offset on.
    pub units: Vec<Unit>,
    /// The earliest retained offset (README "Retention").
    pub retained_from: u64,
    /// Its retention policy's byte limit (`ds.set_retention`).
    pub max_bytes: Option<u64>,
    pub fork: Option<Origin>,
    pub fork_count: usize,
    pub soft_deleted: bool,
    /// §5.2.1: (epoch, last seq) per producer id, per stream.
    pub producers: BTreeMap<String, (i64, i64)>,
    pub last_stream_seq: Option<String>,
    /// The producer claim that closed the stream (§5.2.1 duplicate close).
    pub closed_by: Option<(String, i64, i64)>,
}

impl Stream {
    /// Where a read from `from` starts: `-1` at the earliest retained
    /// offset; an offset below it is SD410 (§5.6, 410 Gone).
    fn read_start(&self, from: super::ops::At) -> Result<u64, String> {
        let start = match from {
            super::ops::At::Start => self.retained_from,
            other => other.resolve(self.tail),
        };
        if start < self.retained_from {
            return Err(NOT_RETAINED.to_owned());
        }
        Ok(start)
    }

    /// Offsets a client can have been given: message starts and the tail.
    pub fn boundaries(&self) -> Vec<u64> {
        let mut b: Vec<u64> = self.msgs.iter().map(|m| m.start).collect();
        b.push(self.tail);
        b
    }

    /// §5.6 / §8: what a read from `from` returns, message by message; a
    /// byte stream may be read from inside a stored chunk (SQL API), a JSON
    /// message starting before `from` is skipped (never split).
    fn visible_from(&self, from: u64) -> Vec<Msg> {
        let from = from.min(self.tail);
        self.msgs
            .iter()
            .filter(|m| m.end() > from)
            .filter_map(|m| {
                if m.start >= from {
                    Some(m.clone())
                } else if self.ct == Ct::Json {
                    None
                } else {
                    let skip = (from - m.start) as usize;
                    Some(Msg { start: from, data: m.data[skip..].to_vec() })
                }
            })
            .collect()
    }
}

/// The model: streams by path index.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub streams: BTreeMap<usize, Stream>,
    /// Expired streams kept without a path while forks read them, by id.
    pub retired: BTreeMap<u64, Stream>,
    pub next_id: u64,
    /// The path grants of `access::ROLE`.
    pub grants: Grants,
    /// The call being applied runs as `access::ROLE`.
    pub as_role: bool,
    /// What the case's stream registry must list (`registry.rs`).
    pub registry: Vec<Change>,
    /// The case's captured table and its stream (a path no other call uses).
    pub cap: super::capture::CapModel,
}

pub fn off(pos: u64) -> String {
    format!("{:016}_{:016}", 0, pos)
}

pub fn hex(data: &[u8]) -> String {
    let mut s = String::from("\\x");
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn b(v: bool) -> Option<String> {
    Some(if v { "t" } else { "f" }.to_owned())
}

fn n(v: Option<i64>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn one(row: Vec<Option<String>>) -> Res {
    Ok(vec![row])
}

/// §9.1: a body of a JSON stream is one message, or (a top-level array) one
/// message per element; every message must be valid JSON; an empty array is
/// refused in appends (§9.1.3) but creates an empty stream. Other types keep
/// the body as one message (SQL API: text types must be UTF-8).
fn messages(ct: Ct, body: &[u8], create: bool) -> Result<Vec<Vec<u8>>, String> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    match ct {
        Ct::Json => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| INVALID_TEXT.to_owned())?;
            match v {
                serde_json::Value::Array(items) if items.is_empty() && !create => {
                    Err(INVALID_PARAMETER.to_owned())
                }
                serde_json::Value::Array(items) => {
                    Ok(items.iter().map(|i| serde_json::to_vec(i).expect("json")).collect())
                }
                v => Ok(vec![serde_json::to_vec(&v).expect("json")]),
            }
        }
        Ct::Text if std::str::from_utf8(body).is_err() => Err("22021".to_owned()),
        _ => Ok(vec![body.to_vec()]),
    }
}

/// One `ds.try_append` result row (the columns the test selects).
#[derive(Default)]
struct Outcome {
    outcome: &'static str,
    next: Option<u64>,
    closed: bool,
    epoch: Option<i64>,
    seq: Option<i64>,
    expected: Option<i64>,
    received: Option<i64>,
    sqlstate: Option<&'static str>,
}

impl Outcome {
    fn new(outcome: &'static str) -> Self {
        Outcome { outcome, ..Default::default() }
    }
    fn at(mut self, tail: u64, closed: bool) -> Self {
        self.next = Some(tail);
        self.closed = closed;
        self
    }
    fn row(&self) -> Vec<Option<String>> {
        vec![
            Some(self.outcome.to_owned()),
            self.next.map(off),
            b(self.closed),
            n(self.epoch),
            n(self.seq),
            n(self.expected),
            n(self.received),
            self.sqlstate.map(str::to_owned),
        ]
    }
}

impl Model {
    pub fn stream(&self, p: usize) -> Option<&Stream> {
        self.streams.get(&p)
    }

    /// The live stream at `p` for a direct operation: 42704 when there is
    /// none, 55006 (410 Gone) when it is soft-deleted (§4.2).
    fn live(&self, p: usize) -> Result<&Stream, String> {
        match self.streams.get(&p) {
            None => Err(NOT_FOUND.to_owned()),
            Some(s) if s.soft_deleted => Err(GONE.to_owned()),
            Some(s) => Ok(s),
        }
    }

    pub fn apply(&mut self, call: &Call) -> Res {
        match call {
            Call::Create { p, ct, ttl, expires, closed, body } => {
                self.create(*p, *ct, *ttl, *expires, *closed, body)
            }
            Call::Append { p, overload, body } => self.append(*p, *overload, body),
            // The same checks and errors as ds.append; nothing returned.
            Call::Enqueue { p, overload, body } => {
                self.append(*p, *overload, body).map(|_| vec![vec![Some(String::new())]])
            }
            Call::Expire { p } => Ok(vec![vec![Some(self.expire(*p).to_string())]]),
            Call::Grant { pattern, privileges } => {
                self.grants.grant(*pattern, *privileges);
                one(vec![Some(String::new())])
            }
            Call::Revoke { pattern, privileges } => {
                self.grants.revoke(*pattern, *privileges);
                one(vec![Some(String::new())])
            }
            Call::AsRole(call) => {
                if let Some(refused) = self.refused(call) {
                    return Err(refused);
                }
                self.as_role = true;
                let r = self.apply(call);
                self.as_role = false;
                r
            }
            Call::TryAppend(req) => Ok(vec![self.try_append(req).row()]),
            Call::Batch(reqs) => Ok(reqs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut row = vec![Some((i + 1).to_string())];
                    row.extend(self.try_append(r).row());
                    row
                })
                .collect()),
            Call::Close { p } => {
                let r = self.try_append(&Req::close_only(*p));
                match r.outcome {
                    "ok" | "already_closed" => one(vec![r.next.map(off)]),
                    "not_found" => Err(NOT_FOUND.to_owned()),
                    "gone" => Err(GONE.to_owned()),
                    other => panic!("close gave {other}"),
                }
            }
            Call::Fork { p, source, offset, sub } => self.fork(*p, *source, *offset, *sub),
            Call::Capture(op) => self.cap.apply(op),
            Call::Read { p, from } => {
                let s = self.live(*p)?;
                Ok(s.visible_from(s.read_start(*from)?)
                    .into_iter()
                    .map(|m| vec![Some(off(m.start)), Some(off(m.end())), Some(hex(&m.data))])
                    .collect())
            }
            Call::ReadChunk { p, from } => {
                let s = self.live(*p)?;
                let start = s.read_start(*from)?;
                let parts = s.visible_from(start);
                let next = parts.last().map_or(start.min(s.tail), Msg::end);
                let body = if s.ct == Ct::Json {
                    let joined: Vec<&[u8]> = parts.iter().map(|m| m.data.as_slice()).collect();
                    [b"[".as_slice(), &joined.join(&b","[..]), b"]"].concat()
                } else {
                    parts.iter().flat_map(|m| m.data.clone()).collect()
                };
                let up_to_date = next == s.tail;
                one(vec![
                    Some(hex(&body)),
                    Some(off(next)),
                    b(up_to_date),
                    b(s.closed && up_to_date),
                    Some(s.ct.name().to_owned()),
                ])
            }
            Call::Head { p } => {
                let s = self.live(*p)?;
                one(vec![
                    Some(s.ct.name().to_owned()),
                    Some(off(s.tail)),
                    b(s.closed),
                    n(s.ttl),
                    Some(off(s.retained_from)),
                ])
            }
            Call::Delete { p } => self.delete(*p),
            // Storage only: nothing a client sees changes.
            Call::Rotate { p } => {
                self.live(*p)?;
                retention::rotate(self.streams.get_mut(p).expect("live"));
                one(vec![Some("1".to_owned())])
            }
            Call::SetRetention { p, max_bytes } => {
                self.live(*p)?;
                self.streams.get_mut(p).expect("live").max_bytes = Some(*max_bytes);
                one(vec![Some(String::new())])
            }
        }
    }

    /// Access control (README "Security") of a call made as the role: the
    /// SQLSTATE of the first check it fails, in the order the functions
    /// check (argument checks that need no stream come before privileges).
    /// `ds.try_append*` answer per request instead (`try_append`).
    fn refused(&self, call: &Call) -> Option<String> {
        let lacks = |p: usize, privilege| !self.grants.allows(p, privilege);
        let denied = |p: usize, privilege| lacks(p, privilege).then(|| FORBIDDEN.to_owned());
        match call {
            Call::Create { ttl: Some(_), expires: true, .. } => None,
            Call::Create { p, .. } => denied(*p, Privilege::Create),
            Call::Fork { sub, .. } if *sub < 0 => None,
            Call::Fork { p, source, .. } => denied(*p, Privilege::Create)
                .or_else(|| denied(*p, Privilege::Fork))
                .or_else(|| denied(*source, Privilege::Read)),
            Call::Append { overload, body, .. } | Call::Enqueue { overload, body, .. }
                if body.is_empty()
                    || (*overload == Overload::Jsonb
                        && serde_json::from_slice::<serde_json::Value>(body).is_err()) =>
            {
                None
            }
            Call::Append { p, .. } | Call::Enqueue { p, .. } | Call::Close { p } => {
                denied(*p, Privilege::Append)
            }
            Call::Read { p, .. } | Call::ReadChunk { p, .. } | Call::Head { p } => {
                denied(*p, Privilege::Read)
            }
            Call::Delete { p } => denied(*p, Privilege::Delete),
            Call::Rotate { p } | Call::SetRetention { p, .. } => denied(*p, Privilege::Admin),
            _ => None,
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// §4 (TTL and expiry): the stream at `p` is past them, and the server
    /// retires it: its path is free, forks keep what they inherited (it
    /// stays, pathless, until the last goes). A soft-deleted stream only
    /// counts as expired. Returns how many streams were retired.
    fn expire(&mut self, p: usize) -> u64 {
        let Some(s) = self.streams.get_mut(&p) else { return 0 };
        if s.ttl.is_none() && !s.expires {
            return 0;
        }
        if s.soft_deleted {
            s.expired = true;
            return 0;
        }
        let mut s = self.streams.remove(&p).expect("just seen");
        if s.fork_count > 0 {
            s.soft_deleted = true;
            self.retired.insert(s.id, s);
        } else {
            self.release(s.fork);
        }
        // Retired, then the stream the test's create made there and deleted.
        self.registry.push(Change { insert: None, p });
        self.registry.push(Change { insert: Some((Ct::Bytes, None, false, None)), p });
        self.registry.push(Change { insert: None, p });
        1
    }

    /// §4.2: a fork of `origin` is gone; a soft-deleted source whose last
    /// fork that was goes too, and so on up the chain.
    fn release(&mut self, mut origin: Option<Origin>) {
        while let Some(o) = origin {
            let at_path = self.streams.get(&o.source).is_some_and(|s| s.id == o.source_id);
            let src = if at_path {
                self.streams.get_mut(&o.source)
            } else {
                self.retired.get_mut(&o.source_id)
            };
            let Some(src) = src else { break };
            src.fork_count -= 1;
            if src.fork_count > 0 || !src.soft_deleted {
                break;
            }
            origin = if at_path {
                self.streams.remove(&o.source).expect("source").fork
            } else {
                self.retired.remove(&o.source_id).expect("source").fork
            };
        }
    }

    /// §5.1: PUT semantics. An existing stream with the same configuration
    /// (content type, TTL, expiry time, closure; not a fork) is confirmed,
    /// any other answers 409 (42710), a soft-deleted one too (§4.2).
    fn create(
        &mut self,
        p: usize,
        ct: Ct,
        ttl: Option<i64>,
        expires: bool,
        closed: bool,
        body: &[u8],
    ) -> Res {
        if ttl.is_some() && expires {
            return Err(INVALID_PARAMETER.to_owned());
        }
        if let Some(s) = self.streams.get(&p) {
            if s.soft_deleted
                || s.ct != ct
                || s.ttl != ttl
                || s.expires != expires
                || s.closed != closed
                || s.fork.is_some()
            {
                return Err(CONFLICT.to_owned());
            }
            return one(vec![b(false), Some(off(s.tail)), Some(ct.name().to_owned()), b(closed)]);
        }
        let mut msgs = Vec::new();
        let mut units = Vec::new();
        let mut tail = 0;
        for data in messages(ct, body, true)? {
            let end = tail + data.len() as u64;
            units.push(Unit { start: tail, end, segment: false });
            msgs.push(Msg { start: tail, data });
            tail = end;
        }
        let s = Stream {
            id: self.new_id(),
            ct,
            ttl,
            expires,
            expired: false,
            closed,
            msgs,
            tail,
            own_start: 0,
            units,
            retained_from: 0,
            max_bytes: None,
            fork: None,
            fork_count: 0,
            soft_deleted: false,
            producers: BTreeMap::new(),
            last_stream_seq: None,
            closed_by: None,
        };
        self.streams.insert(p, s);
        self.registry.push(Change { insert: Some((ct, ttl, expires, None)), p });
        one(vec![b(true), Some(off(tail)), Some(ct.name().to_owned()), b(closed)])
    }

    /// `ds.append` (SQL API): the body is checked against the stream's type
    /// before the append, so a simple call raises the precise SQLSTATE;
    /// protocol outcomes become errors (closed 55000, gone 55006, 42704).
    fn append(&mut self, p: usize, overload: Overload, body: &[u8]) -> Res {
        if overload == Overload::Jsonb && serde_json::from_slice::<serde_json::Value>(body).is_err()
        {
            return Err(INVALID_TEXT.to_owned()); // the ::jsonb cast itself
        }
        if body.is_empty() {
            return Err(INVALID_PARAMETER.to_owned());
        }
        if let Ok(s) = self.live(p) {
            if overload == Overload::Jsonb && s.ct != Ct::Json {
                return Err(TYPE_MISMATCH.to_owned());
            }
            messages(s.ct, body, false)?;
        }
        let r = self.try_append(&Req::plain(p, body.to_vec()));
        match r.outcome {
            "ok" => one(vec![r.next.map(off)]),
            "not_found" => Err(NOT_FOUND.to_owned()),
            "gone" => Err(GONE.to_owned()),
            "stream_closed" => Err(CLOSED.to_owned()),
            other => panic!("append gave {other}"),
        }
    }

    /// §5.2, §5.2.1, §5.3 as one decision, in the protocol's precedence:
    /// closed, content type, producer, Stream-Seq (§5.2 Error Precedence).
    fn try_append(&mut self, req: &Req) -> Outcome {
        if req.body.is_empty() && !req.close {
            // §5.2: an empty body is only valid with Stream-Closed.
            return Outcome {
                sqlstate: Some(INVALID_PARAMETER),
                ..Outcome::new("invalid_request")
            };
        }
        if self.as_role && !self.grants.allows(req.p, Privilege::Append) {
            return Outcome { sqlstate: Some(FORBIDDEN), ..Outcome::new("forbidden") };
        }
        let Some(s) = self.streams.get_mut(&req.p) else { return Outcome::new("not_found") };
        if s.soft_deleted {
            return Outcome::new("gone");
        }
        if s.closed {
            // §5.2.1: the claim that closed the stream is a duplicate.
            let claim = req.producer.as_ref().map(|(id, e, q)| (format!("p{id}"), *e, *q));
            if let Some((_, e, q)) = claim.clone().filter(|c| Some(c) == s.closed_by.as_ref()) {
                return Outcome { epoch: Some(e), seq: Some(q), ..Outcome::new("duplicate") }
                    .at(s.tail, true);
            }
            let outcome = if req.body.is_empty() { "already_closed" } else { "stream_closed" };
            return Outcome::new(outcome).at(s.tail, true);
        }
        if let Some(ct) = req.ct
            && !req.body.is_empty()
            && ct != s.ct
        {
            return Outcome::new("content_type_mismatch").at(s.tail, false);
        }
        let msgs = match messages(s.ct, &req.body, false) {
            Ok(m) => m,
            Err(state) => {
                let sqlstate = if state == INVALID_TEXT { INVALID_TEXT } else { INVALID_PARAMETER };
                return Outcome { sqlstate: Some(sqlstate), ..Outcome::new("invalid_request") };
            }
        };
        let mut accepted = None;
        if let Some((id, epoch, seq)) = req.producer {
            let id = format!("p{id}");
            let echo = |o| Outcome { epoch: Some(epoch), ..Outcome::new(o) };
            // §5.2.1 validation logic; a producer never seen starts at seq 0.
            let rejected = match s.producers.get(&id).copied() {
                None if seq == 0 => None,
                None => Some(Outcome { expected: Some(0), received: Some(seq), ..echo("seq_gap") }),
                Some((e, _)) if epoch < e => {
                    Some(Outcome { epoch: Some(e), ..Outcome::new("stale_epoch") })
                }
                Some((e, _)) if epoch > e && seq != 0 => Some(echo("invalid_epoch_seq")),
                Some((e, _)) if epoch > e => None,
                Some((_, last)) if seq <= last => {
                    Some(Outcome { seq: Some(last), ..echo("duplicate") })
                }
                Some((_, last)) if seq == last + 1 => None,
                Some((_, last)) => Some(Outcome {
                    expected: Some(last + 1),
                    received: Some(seq),
                    ..echo("seq_gap")
                }),
            };
            if let Some(r) = rejected {
                return r.at(s.tail, false);
            }
            accepted = Some((id, epoch, seq));
        }
        if let Some(seq) = &req.stream_seq
            && s.last_stream_seq.as_ref().is_some_and(|last| seq.as_bytes() <= last.as_bytes())
        {
            return Outcome::new("stream_seq_conflict").at(s.tail, false);
        }
        for data in msgs {
            let start = s.tail;
            s.tail += data.len() as u64;
            s.units.push(Unit { start, end: s.tail, segment: false });
            s.msgs.push(Msg { start, data });
        }
        if req.close {
            s.closed = true;
            s.closed_by = accepted.clone();
        }
        if let Some(seq) = &req.stream_seq {
            s.last_stream_seq = Some(seq.clone());
        }
        let (epoch, seq) = match accepted {
            Some((id, e, q)) => {
                s.producers.insert(id, (e, q));
                (Some(e), Some(q))
            }
            None => (None, None),
        };
        Outcome { epoch, seq, ..Outcome::new("ok") }.at(s.tail, req.close)
    }

    /// §4.2: a fork inherits its source's data below the fork point (offset,
    /// default the tail, plus sub-offset messages (JSON) or bytes, never past
    /// the next data boundary), content type and TTL; starts open, with no
    /// producer or Stream-Seq state. Idempotent like create.
    fn fork(&mut self, p: usize, source: usize, offset: Option<u64>, sub: i64) -> Res {
        if sub < 0 {
            return Err(INVALID_PARAMETER.to_owned());
        }
        if let Some(s) = self.streams.get(&p) {
            let same = match &s.fork {
                Some(o) => {
                    o.source == source && offset.is_none_or(|x| x == o.offset) && o.sub == sub
                }
                None => false,
            };
            if s.soft_deleted || s.closed || !same {
                return Err(CONFLICT.to_owned());
            }
            return one(vec![b(false), Some(off(s.tail)), Some(s.ct.name().to_owned()), b(false)]);
        }
        let src = match self.streams.get(&source) {
            None => return Err(NOT_FOUND.to_owned()),
            Some(s) if s.expired => return Err(NOT_FOUND.to_owned()),
            Some(s) if s.soft_deleted => return Err(CONFLICT.to_owned()),
            Some(s) => s,
        };
        let anchor = offset.unwrap_or(src.tail);
        if anchor > src.tail {
            return Err(INVALID_PARAMETER.to_owned());
        }
        if anchor < src.retained_from {
            return Err(NOT_RETAINED.to_owned());
        }
        let after = src.visible_from(anchor);
        let pos = if sub == 0 {
            anchor
        } else if src.ct == Ct::Json {
            let k = sub as usize;
            match (after.get(k), after.len() == k) {
                (Some(m), _) => m.start,
                (None, true) => after[k - 1].end(),
                _ => return Err(INVALID_PARAMETER.to_owned()),
            }
        } else {
            match after.first() {
                Some(m) if (sub as usize) <= m.data.len() => m.start + sub as u64,
                _ => return Err(INVALID_PARAMETER.to_owned()),
            }
        };
        let mut msgs = Vec::new();
        for m in &src.msgs {
            if m.end() <= pos {
                msgs.push(m.clone());
            } else if m.start < pos && src.ct != Ct::Json {
                msgs.push(Msg {
                    start: m.start,
                    data: m.data[..(pos - m.start) as usize].to_vec(),
                });
            }
        }
        let source_id = src.id;
        let fork = Stream {
            id: self.next_id + 1,
            ct: src.ct,
            ttl: src.ttl,
            expires: src.expires,
            expired: false,
            closed: false,
            msgs,
            tail: pos,
            own_start: pos,
            units: Vec::new(),
            retained_from: src.retained_from,
            max_bytes: None,
            fork: Some(Origin { source, source_id, offset: anchor, sub }),
            fork_count: 0,
            soft_deleted: false,
            producers: BTreeMap::new(),
            last_stream_seq: None,
            closed_by: None,
        };
        let ct = fork.ct;
        self.registry.push(Change { insert: Some((ct, fork.ttl, fork.expires, Some(source))), p });
        self.next_id += 1;
        self.streams.get_mut(&source).expect("source").fork_count += 1;
        self.streams.insert(p, fork);
        one(vec![b(true), Some(off(pos)), Some(ct.name().to_owned()), b(false)])
    }

    /// §5.4 / §4.2: a stream with forks is soft-deleted; the last fork's
    /// delete cleans up soft-deleted sources up the chain (cascade).
    fn delete(&mut self, p: usize) -> Res {
        let forks = self.live(p)?.fork_count;
        self.registry.push(Change { insert: None, p });
        if forks > 0 {
            self.streams.get_mut(&p).expect("live").soft_deleted = true;
            return one(vec![Some(String::new())]);
        }
        let origin = self.streams.remove(&p).expect("live").fork;
        self.release(origin);
        one(vec![Some(String::new())])
    }
}
