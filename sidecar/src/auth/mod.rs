//! Who a request acts as.
//!
//! With `--auth none` every request is [`Principal::anonymous`] and runs as
//! the sidecar's own database role, exactly as before authentication
//! existed. With `--auth jwt` a verified token names a Postgres role, and
//! the request's SQL runs as that role (`db.rs`).
//!
//! Architecture invariant: this module only establishes identity. It never
//! decides what a role may do with a stream: the extension checks every
//! `ds.*` call against its grants, and the sidecar maps the answer (42501,
//! outcome `forbidden`) to 403.

pub mod jwt;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AuthMode, Config};

/// The identity a request acts as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The Postgres role to run as; `None`: the sidecar's own role.
    pub role: Option<Arc<str>>,
    /// The token's `sub` (rate-limit key), when it has one.
    pub subject: Option<Arc<str>>,
    /// The token's `exp`, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// The principal of `--auth none`.
    pub fn anonymous() -> Principal {
        Principal::default()
    }

    /// The role as a `&str`, for SQL parameters.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Time left until the token expires (`None`: never).
    pub fn remaining(&self) -> Option<Duration> {
        let exp = self.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Some(Duration::from_secs(exp).saturating_sub(now))
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token at all (401 without an `error` attribute, RFC 6750 §3.1).
    Missing,
    /// A token that does not verify (401 `invalid_token`); the text is the
    /// `error_description`.
    Invalid(&'static str),
    /// A header and a parameter both carry a token (400 `invalid_request`).
    TwoTokens,
    /// The token names the sidecar's own login role (403).
    OwnRole,
}

/// Verifies requests according to `--auth`.
pub struct Authenticator {
    verifier: Option<jwt::Verifier>,
    /// The sidecar's login role: a token naming it would act with every
    /// privilege the sidecar has, so it is refused.
    login_role: Option<String>,
}

impl Authenticator {
    /// Builds the authenticator of `config` (reads the key files).
    pub fn from_config(
        config: &Config,
        login_role: Option<String>,
    ) -> Result<Authenticator, String> {
        if config.auth == AuthMode::None {
            return Ok(Authenticator { verifier: None, login_role });
        }
        let mut secret = config.jwt_secret.as_ref().map(|s| s.0.clone().into_bytes());
        if let Some(path) = &config.jwt_secret_file {
            if secret.is_some() {
                return Err("give either --jwt-secret or --jwt-secret-file, not both".into());
            }
            let text = std::fs::read(path)
                .map_err(|e| format!("cannot read --jwt-secret-file {}: {e}", path.display()))?;
            let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            secret = Some(trimmed.to_vec());
        }
        let jwks = match &config.jwks_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --jwks-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let verifier = jwt::Verifier::new(&jwt::Settings {
            secret: secret.as_deref(),
            jwks: jwks.as_deref(),
            audience: config.jwt_audience.as_deref(),
            issuer: config.jwt_issuer.as_deref(),
            leeway_seconds: config.jwt_leeway_seconds,
            role_claim: &config.jwt_role_claim,
        })?;
        Ok(Authenticator { verifier: Some(verifier), login_role })
    }

    /// Whether requests carry tokens (`--auth jwt`).
    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// The principal of a request with this `Authorization` header value
    /// and raw query string.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        query: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let Some(verifier) = &self.verifier else { return Ok(Principal::anonymous()) };
        let token = token::extract(authorization, query).map_err(|e| match e {
            token::Extract::Missing => AuthError::Missing,
            token::Extract::Malformed => AuthError::Invalid("malformed token"),
            token::Extract::Both => AuthError::TwoTokens,
        })?;
        let verified = verifier.verify(token).map_err(AuthError::Invalid)?;
        if self.login_role.as_deref() == Some(verified.role.as_str()) {
            tracing::warn!(role = %verified.role, "a token names the sidecar's own login role; refused");
            return Err(AuthError::OwnRole);
        }
        Ok(Principal {
            role: Some(verified.role.into()),
            subject: verified.subject.map(Into::into),
            expires_at: Some(verified.expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn jwt_config() -> Config {
        Config::parse_from([
            "ds-sidecar",
            "--database-url",
            "postgresql://x/db",
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
        ])
    }

    fn token(role: &str, exp_in: i64) -> String {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + exp_in;
        let claims = json!({"role": role, "exp": exp});
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn none_is_anonymous() {
        let a = Authenticator::from_config(&Config::with_database_url("postgresql://x/db"), None)
            .unwrap();
        assert!(!a.enabled());
        assert_eq!(a.authenticate(Some("Bearer garbage"), None), Ok(Principal::anonymous()));
    }

    #[test]
    fn jwt_principal() {
        let a = Authenticator::from_config(&jwt_config(), Some("ds_sidecar".into())).unwrap();
        assert!(a.enabled());
        let t = token("tenant_a", 600);
        let p = a.authenticate(Some(&format!("Bearer {t}")), None).unwrap();
        assert_eq!(p.role(), Some("tenant_a"));
        assert!(p.remaining().unwrap() > Duration::from_secs(500));
        let q = format!("offset=-1&token={t}");
        assert_eq!(a.authenticate(None, Some(&q)).unwrap(), p);
        assert_eq!(a.authenticate(None, None), Err(AuthError::Missing));
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {t}")), Some(&q)),
            Err(AuthError::TwoTokens)
        );
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {}", token("tenant_a", -600))), None),
            Err(AuthError::Invalid("token expired"))
        );
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {}", token("ds_sidecar", 600))), None),
            Err(AuthError::OwnRole)
        );
    }

    #[test]
    fn secret_file_and_missing_keys() {
        let dir = std::env::temp_dir().join(format!("ds-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let c = Config::parse_from([
            "ds-sidecar",
            "--database-url",
            "postgresql://x/db",
            "--auth",
            "jwt",
            "--jwt-secret-file",
            file.to_str().unwrap(),
        ]);
        let a = Authenticator::from_config(&c, None).unwrap();
        assert!(a.authenticate(Some(&format!("Bearer {}", token("t", 60))), None).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
        let c = Config::parse_from([
            "ds-sidecar",
            "--database-url",
            "postgresql://x/db",
            "--auth",
            "jwt",
        ]);
        assert!(Authenticator::from_config(&c, None).is_err());
    }
}
