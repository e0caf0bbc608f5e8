//! Server-Sent Events framing (§5.8).
//!
//! Every line of a payload gets its own `data:` prefix (no space, so leading
//! spaces of the payload survive), and CR, LF and CRLF all split lines, so a
//! payload can never smuggle in an event boundary. Binary streams are sent as
//! standard base64.

use base64::Engine as _;
use ds_core::content_type::{self, Mode};
use serde::Serialize;

/// How `data` events carry the stream's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `text/*` and `application/json`: UTF-8 text as is.
    Text,
    /// Everything else: base64, announced by `Stream-SSE-Data-Encoding`.
    Base64,
}

impl Encoding {
    /// The encoding of a stream with this content type.
    pub fn for_content_type(content_type: &str) -> Encoding {
        match content_type::mode(content_type) {
            Ok(Mode::Json | Mode::Text) => Encoding::Text,
            _ => Encoding::Base64,
        }
    }
}

fn push_data_lines(out: &mut String, payload: &str) {
    let mut rest = payload;
    loop {
        match rest.find(['\r', '\n']) {
            Some(i) => {
                out.push_str("data:");
                out.push_str(&rest[..i]);
                out.push('\n');
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                out.push_str("data:");
                out.push_str(rest);
                out.push_str("\n\n");
                return;
            }
        }
    }
}

/// Appends an `event: data` frame carrying `body` to `out`.
pub fn push_data_event(out: &mut String, body: &[u8], encoding: Encoding) {
    out.push_str("event: data\n");
    match encoding {
        Encoding::Text => push_data_lines(out, &String::from_utf8_lossy(body)),
        Encoding::Base64 => {
            push_data_lines(out, &base64::engine::general_purpose::STANDARD.encode(body))
        }
    }
}

/// The JSON of a `control` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    /// Where the client resumes.
    pub stream_next_offset: String,
    /// Cursor for CDN collapsing; omitted once the stream is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_cursor: Option<String>,
    /// Caught up with everything written so far.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub up_to_date: bool,
    /// EOF: the stream is closed and everything was sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream_closed: bool,
}

/// Appends an `event: control` frame to `out`.
pub fn push_control_event(out: &mut String, control: &Control) {
    out.push_str("event: control\n");
    let json = serde_json::to_string(control).expect("a control event always serializes");
    push_data_lines(out, &json);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(body: &[u8], encoding: Encoding) -> String {
        let mut out = String::new();
        push_data_event(&mut out, body, encoding);
        out
    }

    #[test]
    fn encodings() {
        assert_eq!(Encoding::for_content_type("application/json"), Encoding::Text);
        assert_eq!(Encoding::for_content_type("text/plain; charset=utf-8"), Encoding::Text);
        assert_eq!(Encoding::for_content_type("application/octet-stream"), Encoding::Base64);
        assert_eq!(Encoding::for_content_type("application/ndjson"), Encoding::Base64);
    }

    #[test]
    fn text_lines_are_split_on_every_terminator() {
        assert_eq!(data(b"hello", Encoding::Text), "event: data\ndata:hello\n\n");
        assert_eq!(
            data(b" a\r\nb\rc\nd", Encoding::Text),
            "event: data\ndata: a\ndata:b\ndata:c\ndata:d\n\n"
        );
        assert_eq!(
            data(b"x\n\nevent: control", Encoding::Text),
            "event: data\ndata:x\ndata:\ndata:event: control\n\n"
        );
        assert_eq!(data(b"", Encoding::Text), "event: data\ndata:\n\n");
    }

    #[test]
    fn binary_is_base64() {
        assert_eq!(data(b"Hello", Encoding::Base64), "event: data\ndata:SGVsbG8=\n\n");
        assert_eq!(data(b"", Encoding::Base64), "event: data\ndata:\n\n");
    }

    #[test]
    fn control_events() {
        let mut out = String::new();
        let c = Control {
            stream_next_offset: "o".into(),
            stream_cursor: Some("5".into()),
            up_to_date: true,
            stream_closed: false,
        };
        push_control_event(&mut out, &c);
        assert_eq!(
            out,
            "event: control\ndata:{\"streamNextOffset\":\"o\",\"streamCursor\":\"5\",\"upToDate\":true}\n\n"
        );
        out.clear();
        let c = Control {
            stream_next_offset: "o".into(),
            stream_cursor: None,
            up_to_date: false,
            stream_closed: true,
        };
        push_control_event(&mut out, &c);
        assert_eq!(
            out,
            "event: control\ndata:{\"streamNextOffset\":\"o\",\"streamClosed\":true}\n\n"
        );
    }
}
