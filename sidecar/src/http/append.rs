//! Turning a `ds.try_append` result row into an HTTP response (§5.2, §5.3).
//!
//! This is a pure function of the row, so every outcome's status and
//! headers are unit-tested without a database.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ds_core::outcome::AppendOutcome;
use tokio_postgres::error::SqlState;

use super::{ApiError, Headers};
use crate::db::Appended;
use crate::protocol::headers::{
    PRODUCER_EPOCH, PRODUCER_EXPECTED_SEQ, PRODUCER_RECEIVED_SEQ, PRODUCER_SEQ, Producer,
    STREAM_CLOSED, STREAM_NEXT_OFFSET,
};

fn message(row: &Appended, default: &str) -> String {
    row.detail.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn text(status: StatusCode, headers: Headers, body: String) -> Response {
    let mut h = headers;
    h.set(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    (status, h.0, body).into_response()
}

/// The response for an append or close request that produced `row`.
/// `close_only` marks a request without a body: it never answers 200, even
/// with producer headers, since no data was appended.
pub fn respond(
    row: &Appended,
    producer: Option<&Producer>,
    close_only: bool,
) -> Result<Response, ApiError> {
    let Some(outcome) = AppendOutcome::from_name(&row.outcome) else {
        // An outcome this sidecar does not know (a newer extension): its
        // SQLSTATE, if it is a client error's, decides; otherwise a 500
        // (never a panic).
        return Err(match row.sqlstate.as_deref().map(SqlState::from_code) {
            Some(code) => ApiError::from_sqlstate(&code, message(row, "append refused")),
            None => ApiError::Internal(format!("unknown append outcome {:?}", row.outcome)),
        });
    };
    let mut h = Headers::default();
    let next_offset = |h: &mut Headers| {
        if let Some(o) = &row.next_offset {
            h.set(STREAM_NEXT_OFFSET, o);
        }
    };
    let echo_producer = |h: &mut Headers| {
        if let Some(p) = producer {
            h.set(PRODUCER_EPOCH, row.producer_epoch.unwrap_or(p.epoch).to_string());
            h.set(PRODUCER_SEQ, row.producer_seq.unwrap_or(p.seq).to_string());
        }
    };
    let response = match outcome {
        AppendOutcome::Ok => {
            next_offset(&mut h);
            h.flag(STREAM_CLOSED, row.closed);
            echo_producer(&mut h);
            let status = if producer.is_some() && !close_only {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            };
            (status, h.0).into_response()
        }
        AppendOutcome::Duplicate => {
            next_offset(&mut h);
            h.flag(STREAM_CLOSED, row.closed);
            echo_producer(&mut h);
            (StatusCode::NO_CONTENT, h.0).into_response()
        }
        AppendOutcome::AlreadyClosed => {
            next_offset(&mut h);
            h.flag(STREAM_CLOSED, true);
            echo_producer(&mut h);
            (StatusCode::NO_CONTENT, h.0).into_response()
        }
        AppendOutcome::StreamClosed => {
            next_offset(&mut h);
            h.flag(STREAM_CLOSED, true);
            text(StatusCode::CONFLICT, h, message(row, "stream is closed"))
        }
        AppendOutcome::ContentTypeMismatch => {
            text(StatusCode::CONFLICT, h, message(row, "content type does not match the stream's"))
        }
        AppendOutcome::StreamSeqConflict => text(
            StatusCode::CONFLICT,
            h,
            message(row, "Stream-Seq is not greater than the last one"),
        ),
        AppendOutcome::StaleEpoch => {
            if let Some(epoch) = row.producer_epoch {
                h.set(PRODUCER_EPOCH, epoch.to_string());
            }
            text(StatusCode::FORBIDDEN, h, message(row, "stale producer epoch"))
        }
        AppendOutcome::SeqGap => {
            if let Some(s) = row.expected_seq {
                h.set(PRODUCER_EXPECTED_SEQ, s.to_string());
            }
            if let Some(s) = row.received_seq {
                h.set(PRODUCER_RECEIVED_SEQ, s.to_string());
            }
            text(StatusCode::CONFLICT, h, message(row, "producer sequence gap"))
        }
        AppendOutcome::InvalidEpochSeq => text(
            StatusCode::BAD_REQUEST,
            h,
            message(row, "a new producer epoch must start at seq 0"),
        ),
        AppendOutcome::NotFound => return Err(ApiError::NotFound),
        AppendOutcome::Gone => {
            return Err(ApiError::Gone(message(row, "stream was deleted; only its forks remain")));
        }
        // The batcher sends a busy append again on its own; one reaching
        // here means it could not (e.g. shutting down).
        AppendOutcome::Busy => {
            return Err(ApiError::Busy("stream is locked by another transaction"));
        }
        AppendOutcome::InvalidRequest => {
            let code = SqlState::from_code(row.sqlstate.as_deref().unwrap_or("XX000"));
            return Err(ApiError::from_sqlstate(&code, message(row, "invalid request")));
        }
        // The same 403 whatever the detail says (it names the path): the
        // answer never tells whether the stream exists.
        AppendOutcome::Forbidden => {
            tracing::debug!(detail = ?row.detail, "append forbidden");
            return Err(ApiError::Forbidden);
        }
        // 507 with the limit named (SQLSTATE 53400).
        AppendOutcome::QuotaExceeded => {
            let code = SqlState::from_code(row.sqlstate.as_deref().unwrap_or("53400"));
            return Err(match ApiError::from_sqlstate(&code, message(row, "quota exceeded")) {
                e @ ApiError::InsufficientStorage(_) => e,
                _ => ApiError::InsufficientStorage(message(row, "quota exceeded")),
            });
        }
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: &str = "0000000000000000_0000000000000005";

    fn row(outcome: &str) -> Appended {
        Appended { outcome: outcome.into(), next_offset: Some(OFF.into()), ..Appended::default() }
    }

    fn producer() -> Producer {
        Producer { id: "p".into(), epoch: 2, seq: 7 }
    }

    fn header(r: &Response, name: &str) -> Option<String> {
        r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn ok_without_and_with_producer() {
        let r = respond(&row("ok"), None, false).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "stream-next-offset").as_deref(), Some(OFF));
        assert_eq!(header(&r, "stream-closed"), None);
        assert_eq!(header(&r, "producer-epoch"), None);

        let mut ok = row("ok");
        ok.closed = true;
        ok.producer_epoch = Some(2);
        ok.producer_seq = Some(7);
        let r = respond(&ok, Some(&producer()), false).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "stream-closed").as_deref(), Some("true"));
        assert_eq!(header(&r, "producer-epoch").as_deref(), Some("2"));
        assert_eq!(header(&r, "producer-seq").as_deref(), Some("7"));

        // A close-only request appends nothing: 204 even with producer headers.
        let r = respond(&ok, Some(&producer()), true).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "producer-seq").as_deref(), Some("7"));
    }

    #[test]
    fn duplicates_and_closes() {
        let mut dup = row("duplicate");
        dup.producer_seq = Some(9);
        let r = respond(&dup, Some(&producer()), false).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "producer-seq").as_deref(), Some("9"));
        assert_eq!(header(&r, "producer-epoch").as_deref(), Some("2"));

        let r = respond(&row("already_closed"), None, false).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "stream-closed").as_deref(), Some("true"));

        let r = respond(&row("stream_closed"), None, false).unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(header(&r, "stream-closed").as_deref(), Some("true"));
        assert_eq!(header(&r, "stream-next-offset").as_deref(), Some(OFF));
    }

    #[test]
    fn producer_rejections() {
        let mut stale = row("stale_epoch");
        stale.producer_epoch = Some(5);
        let r = respond(&stale, Some(&producer()), false).unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(header(&r, "producer-epoch").as_deref(), Some("5"));

        let mut gap = row("seq_gap");
        gap.expected_seq = Some(3);
        gap.received_seq = Some(7);
        let r = respond(&gap, Some(&producer()), false).unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(header(&r, "producer-expected-seq").as_deref(), Some("3"));
        assert_eq!(header(&r, "producer-received-seq").as_deref(), Some("7"));

        assert_eq!(respond(&row("invalid_epoch_seq"), None, false).unwrap().status(), 400);
        assert_eq!(respond(&row("content_type_mismatch"), None, false).unwrap().status(), 409);
        assert_eq!(respond(&row("stream_seq_conflict"), None, false).unwrap().status(), 409);
    }

    #[test]
    fn errors() {
        assert!(matches!(respond(&row("not_found"), None, false), Err(ApiError::NotFound)));
        let mut bad = row("invalid_request");
        bad.sqlstate = Some("22P02".into());
        bad.detail = Some("body is not valid JSON".into());
        match respond(&bad, None, false) {
            Err(ApiError::BadRequest(m)) => assert_eq!(m, "body is not valid JSON"),
            other => panic!("{other:?}"),
        }
        bad.sqlstate = Some("54000".into());
        assert_eq!(respond(&bad, None, false).unwrap_err().status(), 413);
        assert!(matches!(respond(&row("bogus"), None, false), Err(ApiError::Internal(_))));
    }

    #[test]
    fn access_control_and_quota_outcomes() {
        let mut forbidden = row("forbidden");
        forbidden.sqlstate = Some("42501".into());
        forbidden.detail = Some("permission denied: append on a/b".into());
        let e = respond(&forbidden, None, false).unwrap_err();
        assert!(matches!(e, ApiError::Forbidden));
        assert!(!e.to_string().contains("a/b"), "the 403 body is generic");
        let mut quota = row("quota_exceeded");
        quota.sqlstate = Some("53400".into());
        quota.detail = Some("quota of tenant_a exceeded".into());
        let e = respond(&quota, None, false).unwrap_err();
        assert_eq!(e.status(), 507);
        assert!(e.to_string().contains("quota of tenant_a exceeded"));
        // Unknown outcomes with a client-error SQLSTATE map by it.
        let mut later = row("something_new");
        later.sqlstate = Some("22023".into());
        assert_eq!(respond(&later, None, false).unwrap_err().status(), 400);
    }
}
