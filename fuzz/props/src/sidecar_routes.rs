//! Paths and credentials: the reserved `__ds` routes, stream paths, bearer
//! tokens and JWT verification.

use ds_sidecar::auth::jwt::{Settings, Verifier};
use ds_sidecar::auth::token;
use ds_sidecar::subscriptions::route::{self, Action, Route};
use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use crate::sidecar_http::router_decode;
use crate::text;

/// Everything but unreserved characters is escaped in one path part.
const PART: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

const METHODS: [Method; 6] =
    [Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::HEAD, Method::PATCH];

/// Input: a method byte, then a raw request path. A parsed `__ds` route
/// re-encodes (every part percent-encoded) to a path that parses the same;
/// a stream path the router decodes is one the stream rules judge without
/// panicking.
pub fn paths(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else { return };
    let Some(path) = text(rest) else { return };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    match route::parse(method, path) {
        Some(Ok(Route::Subscription { id, action })) => {
            assert!(!id.is_empty());
            let mut again =
                format!("{}/subscriptions/{}", route::PREFIX, utf8_percent_encode(&id, PART));
            match &action {
                Action::Put | Action::Get | Action::Delete => {}
                Action::AddStreams => again.push_str("/streams"),
                Action::RemoveStream(p) => {
                    assert!(!p.is_empty());
                    again.push_str("/streams/");
                    again.extend(utf8_percent_encode(p, PART));
                }
                Action::Callback => again.push_str("/callback"),
                Action::Claim => again.push_str("/claim"),
                Action::Ack => again.push_str("/ack"),
                Action::Release => again.push_str("/release"),
            }
            let reparsed = route::parse(method, &again);
            assert_eq!(reparsed, Some(Ok(Route::Subscription { id, action })), "{again:?}");
        }
        Some(Ok(Route::Jwks)) => assert!(matches!(*method, Method::GET | Method::HEAD)),
        Some(Err(_)) => {}
        None => {
            let stream = path.strip_prefix("/v1/stream/").and_then(router_decode);
            if let Some(p) = stream {
                let _ = ds_core::limits::validate_path(&p);
            }
        }
    }
    if let Some(t) = route::bearer(Some(path)) {
        assert!(!t.is_empty() && path.contains(t));
    }
}

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

/// Input: `authorization\nquery\nrole claim`. Token extraction only returns
/// JWT characters and `strip_token` never keeps one; verification of any
/// text never panics and only accepts valid role names; a token we sign
/// verifies exactly when its role is valid, and a changed signature never.
pub fn jwt(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let mut fields = input.splitn(3, '\n');
    let (auth, query, role) =
        (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    if let Ok(t) = token::extract(Some(auth).filter(|a| !a.is_empty()), Some(query)) {
        assert!(
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
    }
    if let Some(kept) = token::strip_token(query) {
        assert!(kept.split('&').all(|p| !p.is_empty() && p != "token" && !p.starts_with("token=")));
        assert!(token::extract(None, Some(&kept)).is_err());
    }
    let verifier = Verifier::new(&Settings {
        secret: Some(SECRET),
        role_claim: "role",
        ..Settings::default()
    })
    .expect("a verifier");
    for candidate in [auth, query, role] {
        if let Ok(v) = verifier.verify(candidate) {
            assert!(token::is_valid_role(&v.role));
        }
    }
    let claims = json!({ "role": role, "exp": 4_102_444_800u64, "sub": auth });
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("signing");
    match verifier.verify(&signed) {
        Ok(v) => {
            assert!(token::is_valid_role(role));
            assert_eq!((v.role.as_str(), v.subject.as_deref()), (role, Some(auth)));
        }
        Err(_) => assert!(!token::is_valid_role(role)),
    }
    let mut tampered = signed.into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    assert!(verifier.verify(&tampered).is_err(), "a changed signature is refused");
}
