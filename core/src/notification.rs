//! The notification format: channel and payload that LISTENing clients
//! (SQL users, the sidecar) rely on.
//!
//! The channel is private to an installation: `ds.notify_channel()` names
//! it (a random name beginning with [`CHANNEL`]), so that only roles allowed
//! to call that function can listen to paths and tails. A payload is one or more lines separated by `\n`:
//! `<tail offset> <path>` when the stream advanced, `! <tail offset> <path>`
//! when it advanced or closed and is now closed, `- <path>` when it was
//! deleted, and `*` when anything may have changed (the sender lost track,
//! e.g. after a restart or when too many streams advanced at once).
//! Notifications are sent at commit and are only hints: readers always
//! re-read from their own offset.

use crate::offset::Offset;

/// The prefix of every installation's channel, and the channel used when an
/// installation has none recorded.
pub const CHANNEL: &str = "durable_streams";

/// Longest payload senders produce (Postgres allows < 8000 bytes).
pub const MAX_PAYLOAD: usize = 7900;

/// One line of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The stream at `path` now ends at `tail`, and is `closed` or not.
    Advanced { path: String, tail: Offset, closed: bool },
    /// The stream at `path` was deleted.
    Deleted { path: String },
    /// Re-check every stream.
    Everything,
}

impl Announcement {
    /// The payload line for this announcement.
    pub fn line(&self) -> String {
        match self {
            Announcement::Advanced { path, tail, closed: false } => format!("{tail} {path}"),
            Announcement::Advanced { path, tail, closed: true } => format!("! {tail} {path}"),
            Announcement::Deleted { path } => format!("- {path}"),
            Announcement::Everything => "*".to_owned(),
        }
    }
}

/// Packs lines into as few payloads of at most `max` bytes as possible.
/// A line is never split (paths are at most 1024 bytes, far below `max`).
pub fn pack(lines: &[String], max: usize) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    for line in lines {
        match payloads.last_mut() {
            Some(p) if p.len() + 1 + line.len() <= max => {
                p.push('\n');
                p.push_str(line);
            }
            _ => payloads.push(line.clone()),
        }
    }
    payloads
}

/// Parses a payload; an unreadable line means "re-check everything", since
/// a hint must never be lost.
pub fn parse(payload: &str) -> Vec<Announcement> {
    payload
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            if line == "*" {
                return Announcement::Everything;
            }
            let (closed, line) = match line.strip_prefix("! ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            match line.split_once(' ') {
                Some(("-", path)) if !closed => Announcement::Deleted { path: path.to_owned() },
                Some((tail, path)) => match Offset::parse(tail) {
                    Ok(tail) => Announcement::Advanced { path: path.to_owned(), tail, closed },
                    Err(_) => Announcement::Everything,
                },
                None => Announcement::Everything,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_lines_under_the_limit() {
        let lines: Vec<String> = (0..5).map(|i| format!("line{i}")).collect();
        assert_eq!(pack(&lines, 100), vec!["line0\nline1\nline2\nline3\nline4"]);
        assert_eq!(pack(&lines, 11), vec!["line0\nline1", "line2\nline3", "line4"]);
        assert!(pack(&[], 10).is_empty());
    }

    #[test]
    fn round_trips() {
        let all = vec![
            Announcement::Advanced { path: "a b/c".into(), tail: Offset(42), closed: false },
            Announcement::Advanced { path: "! x".into(), tail: Offset(7), closed: true },
            Announcement::Deleted { path: "x".into() },
            Announcement::Everything,
        ];
        let lines: Vec<String> = all.iter().map(Announcement::line).collect();
        let payloads = pack(&lines, MAX_PAYLOAD);
        assert_eq!(payloads.len(), 1);
        assert_eq!(parse(&payloads[0]), all);
        assert_eq!(parse("garbage"), vec![Announcement::Everything]);
        assert_eq!(parse("nope path"), vec![Announcement::Everything]);
        assert_eq!(parse("! - path"), vec![Announcement::Everything]);
    }
}
