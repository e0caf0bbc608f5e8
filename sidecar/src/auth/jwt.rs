//! JWT verification with `jsonwebtoken` (no cryptography of our own).
//!
//! Keys: an HS256 secret, and RS256 / EdDSA (Ed25519) public keys from a
//! local JWKS file, selected by the token's `kid`. The algorithm a token
//! may use is decided by the KEY it selects, never by the token alone: an
//! `HS256` token is only checked against the HS256 secret, an `RS256` or
//! `EdDSA` token only against the JWKS key named by its `kid`, whose type
//! (and `alg`, when the JWK states one) must match. So a token "signed"
//! with HS256 using a public key as the secret (algorithm confusion) and
//! `alg: none` are refused. Claims checked: `exp` (required), `nbf`, `aud`,
//! `iss`, with a leeway for clock skew.

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::token::is_valid_role;

/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The Postgres role named by the role claim (a valid identifier).
    pub role: String,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Verification settings and keys.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    jwks: HashMap<String, (Algorithm, DecodingKey)>,
    validation: Validation,
    role_claim: String,
}

/// Settings of a [`Verifier`].
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    /// HS256 secret.
    pub secret: Option<&'a [u8]>,
    /// The text of a JWKS document.
    pub jwks: Option<&'a str>,
    /// Required `aud`.
    pub audience: Option<&'a str>,
    /// Required `iss`.
    pub issuer: Option<&'a str>,
    /// Allowed clock skew, seconds.
    pub leeway_seconds: u64,
    /// The claim naming the role.
    pub role_claim: &'a str,
}

impl Verifier {
    /// Builds a verifier; the error says what is wrong with the keys.
    pub fn new(s: &Settings<'_>) -> Result<Verifier, String> {
        let hs256 = match s.secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(format!(
                    "the JWT secret has {} bytes; use at least {MIN_SECRET_BYTES}",
                    secret.len()
                ));
            }
            Some(secret) => Some(DecodingKey::from_secret(secret)),
            None => None,
        };
        let jwks = match s.jwks {
            Some(text) => load_jwks(text)?,
            None => HashMap::new(),
        };
        if hs256.is_none() && jwks.is_empty() {
            return Err(
                "--auth jwt needs a key: --jwt-secret / --jwt-secret-file and/or --jwks-file"
                    .into(),
            );
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = s.leeway_seconds;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match s.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = s.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier { hs256, jwks, validation, role_claim: s.role_claim.to_owned() })
    }

    /// Verifies `token`; the error is the `error_description` of a 401.
    pub fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let (algorithm, key) = match header.alg {
            Algorithm::HS256 => (Algorithm::HS256, self.hs256.as_ref().ok_or("unknown key")?),
            Algorithm::RS256 | Algorithm::EdDSA => {
                let kid = header.kid.as_deref().ok_or("unknown key")?;
                let (alg, key) = self.jwks.get(kid).ok_or("unknown key")?;
                if *alg != header.alg {
                    return Err("algorithm does not match the key");
                }
                (*alg, key)
            }
            _ => return Err("algorithm not allowed"),
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| describe(e.kind()))?;
        let claims = data.claims;
        let role = claims
            .get(&self.role_claim)
            .and_then(Value::as_str)
            .filter(|r| is_valid_role(r))
            .ok_or("role claim missing or not a valid role name")?;
        let expires_at = claims.get("exp").and_then(Value::as_u64).ok_or("invalid exp claim")?;
        Ok(Verified {
            role: role.to_owned(),
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            expires_at,
        })
    }
}

/// A short, fixed description of a verification failure (safe to put in a
/// quoted header parameter).
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not allowed",
        ErrorKind::MissingRequiredClaim(_) => "required claim missing",
        ErrorKind::InvalidClaimFormat(_) => "invalid claim",
        _ => "malformed token",
    }
}

/// The signing keys of a JWKS document by `kid`, each with the one
/// algorithm it may verify. Keys for encryption are skipped; anything else
/// we cannot use is an error (better to refuse to start than to silently
/// ignore a key an issuer signs with).
fn load_jwks(text: &str) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let kid = jwk.common.key_id.clone().ok_or("a JWKS key has no kid")?;
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => return Err(format!("JWKS key {kid:?}: only RSA and Ed25519 keys are supported")),
        };
        match (jwk.common.key_algorithm, inferred) {
            (None, _)
            | (Some(KeyAlgorithm::RS256), Algorithm::RS256)
            | (Some(KeyAlgorithm::EdDSA), Algorithm::EdDSA) => {}
            (Some(other), _) => {
                return Err(format!("JWKS key {kid:?}: algorithm {other:?} is not supported"));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {kid:?}: {e}"))?;
        if keys.insert(kid.clone(), (inferred, key)).is_some() {
            return Err(format!("JWKS: two keys with kid {kid:?}"));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const JWKS: &str = include_str!("testdata/jwks.json");
    const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa_private.der");
    const RSA_PUBLIC_PEM: &[u8] = include_bytes!("testdata/rsa_public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("testdata/ed25519_private.der");

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn verifier(audience: Option<&str>, issuer: Option<&str>) -> Verifier {
        Verifier::new(&Settings {
            secret: Some(SECRET),
            jwks: Some(JWKS),
            audience,
            issuer,
            leeway_seconds: 30,
            role_claim: "role",
        })
        .unwrap()
    }

    fn claims() -> Value {
        json!({"role": "tenant_a", "sub": "alice", "exp": now() + 600})
    }

    fn hs(claims: &Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn signed(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, claims, key).unwrap()
    }

    fn rs(claims: &Value) -> String {
        signed(Algorithm::RS256, "test-rsa", &EncodingKey::from_rsa_der(RSA_PRIVATE), claims)
    }

    fn ed(claims: &Value) -> String {
        signed(Algorithm::EdDSA, "test-ed", &EncodingKey::from_ed_der(ED_PRIVATE), claims)
    }

    #[test]
    fn good_tokens_of_every_kind() {
        let v = verifier(None, None);
        for token in [hs(&claims()), rs(&claims()), ed(&claims())] {
            let got = v.verify(&token).unwrap();
            assert_eq!(got.role, "tenant_a");
            assert_eq!(got.subject.as_deref(), Some("alice"));
            assert!(got.expires_at > now());
        }
    }

    #[test]
    fn time_claims() {
        let v = verifier(None, None);
        let mut c = claims();
        c["exp"] = json!(now() - 120);
        assert_eq!(v.verify(&hs(&c)), Err("token expired"));
        c["exp"] = json!(now() - 10); // within the 30 s leeway
        assert!(v.verify(&hs(&c)).is_ok());
        let mut c = claims();
        c["nbf"] = json!(now() + 300);
        assert_eq!(v.verify(&hs(&c)), Err("token not yet valid"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(v.verify(&hs(&c)), Err("required claim missing"));
    }

    #[test]
    fn audience_and_issuer() {
        let v = verifier(Some("streams"), Some("https://issuer.example"));
        let mut c = claims();
        assert_eq!(v.verify(&hs(&c)), Err("required claim missing"));
        c["aud"] = json!("streams");
        c["iss"] = json!("https://issuer.example");
        assert!(v.verify(&hs(&c)).is_ok());
        c["aud"] = json!("other");
        assert_eq!(v.verify(&hs(&c)), Err("wrong audience"));
        c["aud"] = json!("streams");
        c["iss"] = json!("https://evil.example");
        assert_eq!(v.verify(&hs(&c)), Err("wrong issuer"));
        // Without a configured audience, a token's aud is not held against it.
        let mut c = claims();
        c["aud"] = json!("anything");
        assert!(verifier(None, None).verify(&hs(&c)).is_ok());
    }

    #[test]
    fn wrong_keys() {
        let v = verifier(None, None);
        let other = EncodingKey::from_secret(b"another secret of thirty-two bytes!!");
        let forged = encode(&Header::new(Algorithm::HS256), &claims(), &other).unwrap();
        assert_eq!(v.verify(&forged), Err("invalid signature"));
        // An EdDSA token claiming the RSA key's kid.
        let t =
            signed(Algorithm::EdDSA, "test-rsa", &EncodingKey::from_ed_der(ED_PRIVATE), &claims());
        assert_eq!(v.verify(&t), Err("algorithm does not match the key"));
        let t =
            signed(Algorithm::RS256, "nope", &EncodingKey::from_rsa_der(RSA_PRIVATE), &claims());
        assert_eq!(v.verify(&t), Err("unknown key"));
        // A tampered payload.
        let token = rs(&claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = claims();
        c["role"] = json!("tenant_b");
        parts[1] = hs(&c).split('.').nth(1).unwrap().to_owned();
        assert_eq!(v.verify(&parts.join(".")), Err("invalid signature"));
    }

    #[test]
    fn algorithm_confusion_and_none() {
        // HS256 "signed" with the RSA public key as the secret, naming the RSA kid.
        let v = verifier(None, None);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-rsa".into());
        let t = encode(&header, &claims(), &EncodingKey::from_secret(RSA_PUBLIC_PEM)).unwrap();
        assert_eq!(v.verify(&t), Err("invalid signature"));
        // The same against a verifier with only the JWKS: no HS256 key at all.
        let jwks_only = Verifier::new(&Settings {
            jwks: Some(JWKS),
            role_claim: "role",
            leeway_seconds: 30,
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(jwks_only.verify(&t), Err("unknown key"));
        // alg: none, and algorithms we never accept.
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims()));
        assert_eq!(v.verify(&none), Err("malformed token"));
        let hs512 =
            encode(&Header::new(Algorithm::HS512), &claims(), &EncodingKey::from_secret(SECRET))
                .unwrap();
        assert_eq!(v.verify(&hs512), Err("algorithm not allowed"));
    }

    #[test]
    fn malformed_tokens_and_roles() {
        let v = verifier(None, None);
        for t in ["", "abc", "a.b.c", "a.b", "...."] {
            assert!(v.verify(t).is_err(), "{t:?}");
        }
        for role in [json!("none"), json!("pg_monitor"), json!("a;b"), json!(5), json!(null)] {
            let mut c = claims();
            c["role"] = role;
            assert_eq!(v.verify(&hs(&c)), Err("role claim missing or not a valid role name"));
        }
        let custom = Verifier::new(&Settings {
            secret: Some(SECRET),
            role_claim: "pg_role",
            leeway_seconds: 0,
            ..Settings::default()
        })
        .unwrap();
        let c = json!({"pg_role": "tenant_b", "exp": now() + 60});
        assert_eq!(custom.verify(&hs(&c)).unwrap().role, "tenant_b");
        assert!(custom.verify(&hs(&claims())).is_err());
    }

    #[test]
    fn bad_settings() {
        let short = Verifier::new(&Settings { secret: Some(b"short"), ..Settings::default() });
        assert!(short.err().unwrap().contains("at least 32"));
        assert!(Verifier::new(&Settings::default()).is_err());
        let ec = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert!(Verifier::new(&Settings { jwks: Some(ec), ..Settings::default() }).is_err());
        let no_kid = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(Verifier::new(&Settings { jwks: Some(no_kid), ..Settings::default() }).is_err());
    }
}
