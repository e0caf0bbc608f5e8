//! Operational endpoints: `/health` (main port, unauthenticated, says
//! nothing but ok / not ok) and `/metrics` (its own listener).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// `GET /health`: 200 when the database answers `SELECT 1`, else 503.
pub(super) async fn health(State(state): State<AppState>) -> Response {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "not ok\n").into_response()
        }
    }
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let (size, available) = state.db.pool_status();
    let m = &state.metrics;
    m.pool_size.set(i64::try_from(size).unwrap_or(i64::MAX));
    m.pool_available.set(i64::try_from(available).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        m.encode(),
    )
        .into_response()
}
