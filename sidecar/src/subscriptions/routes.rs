//! Handlers of the reserved `/v1/stream/__ds/...` routes (PROTOCOL.md §6-7).
//!
//! Authentication per route: the control routes and `claim` go through
//! the sidecar's authentication and run as the request's role (the
//! extension checks ownership and path privileges); `callback`, `ack` and
//! `release` carry a wake token as `Authorization: Bearer`, which IS their
//! credential (checked by the extension), so they skip token verification
//! and run as the sidecar's own role; `jwks.json` is public. All of them
//! are rate limited.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::SubError;
use super::route::{self, Action, NoRoute, Route};
use super::store::{self, TokenCall};
use crate::AppState;
use crate::auth::Principal;
use crate::http::ApiError;

/// Cache-Control of the JWKS (PROTOCOL.md §6.5).
const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

/// Every `__ds` request.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let route = match route::parse(&parts.method, parts.uri.path()) {
        Some(Ok(r)) => r,
        None | Some(Err(NoRoute::Unknown)) => {
            return SubError::new(
                "SUBSCRIPTION_NOT_FOUND",
                "no such Durable Streams control route",
            )
            .into_response();
        }
        Some(Err(NoRoute::Method)) => return SubError::MethodNotAllowed.into_response(),
        Some(Err(NoRoute::Encoding)) => {
            return SubError::invalid("the path is not valid percent-encoded UTF-8")
                .into_response();
        }
    };
    let authenticate = match &route {
        Route::Jwks => false,
        Route::Subscription { action, .. } => !action.uses_wake_token(),
    };
    let principal = match crate::http::admit(
        &state,
        &parts.headers,
        &parts.uri,
        &parts.extensions,
        authenticate,
    ) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::PayloadTooLarge(format!(
                "the body is over {} bytes (or was cut off)",
                state.config.max_body_bytes
            ))
            .into_response();
        }
    };
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let result = match route {
        Route::Jwks => jwks(&state).await,
        Route::Subscription { id, action } => {
            subscription(&state, &principal, &id, action, authorization, &body).await
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A JSON response.
fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The request body as JSON; an empty body is `{}`.
fn parse_body(body: &Bytes) -> Result<Value, SubError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| SubError::invalid(format!("invalid JSON body: {e}")))
}

/// The answer of an extension call, or its error.
fn answer(value: Value) -> Result<Value, SubError> {
    match SubError::from_answer(&value) {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

async fn subscription(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
    authorization: Option<&str>,
    body: &Bytes,
) -> Result<Response, SubError> {
    let (db, role, subs) = (&state.db, principal.role(), &state.subscriptions);
    let no_content = || StatusCode::NO_CONTENT.into_response();
    match action {
        Action::Put => {
            let config = parse_body(body)?;
            let value = answer(store::put(db, role, id, &config).await?)?;
            let created = value.get("created").and_then(Value::as_bool).unwrap_or(false);
            let doc = with_signing(state, value.get("subscription").cloned()).await?;
            // A new subscription may have pending work already.
            subs.kick();
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json_response(status, &doc))
        }
        Action::Get => {
            let value = answer(store::get(db, role, id).await?)?;
            Ok(json_response(
                StatusCode::OK,
                &with_signing(state, value.get("subscription").cloned()).await?,
            ))
        }
        Action::Delete => {
            answer(store::delete(db, role, id).await?)?;
            Ok(no_content())
        }
        Action::AddStreams => {
            let paths = stream_list(&parse_body(body)?)?;
            answer(store::add_streams(db, role, id, &paths).await?)?;
            Ok(no_content())
        }
        Action::RemoveStream(path) => {
            answer(store::remove_stream(db, role, id, &path).await?)?;
            Ok(no_content())
        }
        Action::Claim => {
            let request = parse_body(body)?;
            let worker = request.get("worker").and_then(Value::as_str).filter(|w| !w.is_empty());
            let worker =
                worker.ok_or_else(|| SubError::invalid("worker must be a non-empty string"))?;
            let value = answer(store::claim(db, role, id, worker).await?)?;
            Ok(json_response(StatusCode::OK, &value))
        }
        Action::Callback | Action::Ack | Action::Release => {
            let token = route::bearer(authorization).ok_or_else(|| {
                SubError::new("TOKEN_INVALID", "missing or malformed Authorization: Bearer <token>")
            })?;
            let request = parse_body(body)?;
            if !request.is_object() {
                return Err(SubError::invalid("the body must be a JSON object"));
            }
            let call = match action {
                Action::Callback => TokenCall::Callback,
                Action::Ack => TokenCall::Ack,
                _ => TokenCall::Release,
            };
            let value = answer(store::with_token(db, call, id, token, &request).await?)?;
            // A next wake (webhook: to deliver now) or an ended lease.
            subs.kick();
            if call == TokenCall::Release {
                return Ok(no_content());
            }
            Ok(json_response(StatusCode::OK, &value))
        }
    }
}

/// `{"streams": [...]}` of `POST .../streams`: non-empty strings.
fn stream_list(request: &Value) -> Result<Vec<String>, SubError> {
    let invalid = || SubError::invalid("streams must be a non-empty array of non-empty strings");
    let list = request.get("streams").and_then(Value::as_array).ok_or_else(invalid)?;
    if list.is_empty() {
        return Err(invalid());
    }
    list.iter()
        .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_owned).ok_or_else(invalid))
        .collect()
}

/// A subscription document with `webhook.signing` added (webhook ones).
async fn with_signing(state: &AppState, doc: Option<Value>) -> Result<Value, SubError> {
    let mut doc = doc.ok_or_else(|| {
        SubError::Api(ApiError::Internal("the extension answered without a subscription".into()))
    })?;
    if let Some(webhook) = doc.get_mut("webhook").and_then(Value::as_object_mut) {
        let key = signing_key(state).await?;
        webhook.insert(
            "signing".into(),
            json!({"alg": "ed25519", "kid": key.kid, "jwks_url": state.subscriptions.jwks_url()}),
        );
    }
    Ok(doc)
}

async fn signing_key(
    state: &AppState,
) -> Result<std::sync::Arc<super::signing::SigningKey>, SubError> {
    state.subscriptions.keys.current(&state.db).await.map_err(|e| match e {
        super::keys::KeysError::Db(e) => SubError::from(e),
        other => SubError::Api(ApiError::Internal(other.to_string())),
    })
}

/// `GET /__ds/jwks.json`: makes sure a key exists, then serves the set.
async fn jwks(state: &AppState) -> Result<Response, SubError> {
    signing_key(state).await?;
    let set = store::jwks(&state.db).await?;
    let mut response = Response::new(Body::from(set));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(JWKS_CACHE_CONTROL));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_stream_lists() {
        assert_eq!(parse_body(&Bytes::from_static(b"")).unwrap(), json!({}));
        assert_eq!(parse_body(&Bytes::from_static(b" \n")).unwrap(), json!({}));
        assert!(matches!(parse_body(&Bytes::from_static(b"{nope")), Err(SubError::Coded { .. })));
        assert_eq!(stream_list(&json!({"streams": ["a", "b/c"]})).unwrap(), vec!["a", "b/c"]);
        for bad in [
            json!({}),
            json!({"streams": []}),
            json!({"streams": [""]}),
            json!({"streams": [1]}),
            json!({"streams": "a"}),
        ] {
            assert!(stream_list(&bad).is_err(), "{bad}");
        }
    }
}
