//! Webhook signatures (PROTOCOL.md §7.1, §6.5): Ed25519 over
//! `<t>.<raw body>`, sent as `Webhook-Signature: t=<unix secs>,kid=<kid>,
//! ed25519=<base64url, no padding>`. Keys come from `ed25519-dalek` seeded by
//! the operating system's random source; a key's `kid` is `ds_` followed by
//! its RFC 7638 JWK thumbprint (SHA-256 of the canonical
//! `{"crv","kty","x"}` JSON), so it is derived from the key material.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, Verifier as _};
use rand::TryRngCore as _;
use sha2::{Digest as _, Sha256};

/// The `Webhook-Signature` header.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// A private signing key and its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    /// `ds_` + the RFC 7638 thumbprint of the public key.
    pub kid: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// A key as stored by `ds.subscription_add_signing_key`.
pub struct NewKey {
    /// Its `kid`.
    pub kid: String,
    /// The 32-byte public key.
    pub public_key: [u8; 32],
    /// The 32-byte seed (the private key).
    pub private_key: [u8; 32],
}

/// Why a key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("no randomness for a signing key: {0}")]
    Random(String),
    /// A stored private key is not a 32-byte seed.
    #[error("stored signing key {kid} is {len} bytes, not a 32-byte Ed25519 seed")]
    BadLength {
        /// The key's id.
        kid: String,
        /// Its length.
        len: usize,
    },
}

/// Generates a fresh key from the operating system's random source.
pub fn generate() -> Result<NewKey, KeyError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let public_key = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    Ok(NewKey { kid: kid_for(&public_key), public_key, private_key: seed })
}

/// `x` of a public key's JWK: base64url without padding.
pub fn jwk_x(public_key: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(public_key)
}

/// `ds_` + the RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over
/// the required members in lexicographic order, no whitespace (RFC 8037 §2).
pub fn kid_for(public_key: &[u8; 32]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, jwk_x(public_key));
    format!("ds_{}", URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

impl SigningKey {
    /// A key from its stored `kid` and 32-byte seed.
    pub fn from_stored(kid: String, private_key: &[u8]) -> Result<SigningKey, KeyError> {
        let seed: [u8; 32] = private_key
            .try_into()
            .map_err(|_| KeyError::BadLength { kid: kid.clone(), len: private_key.len() })?;
        Ok(SigningKey { kid, key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The `Webhook-Signature` value of `body` sent at `unix_secs`.
    pub fn signature_header(&self, unix_secs: u64, body: &[u8]) -> String {
        let signature = self.key.sign(&signed_bytes(unix_secs, body));
        format!(
            "t={unix_secs},kid={},ed25519={}",
            self.kid,
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// `<t>.<raw body>`: what is signed.
fn signed_bytes(unix_secs: u64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{unix_secs}.").into_bytes();
    message.extend_from_slice(body);
    message
}

/// The parts of a `Webhook-Signature` value.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    /// `t`.
    pub unix_secs: u64,
    /// `kid`.
    pub kid: &'a str,
    /// The signature, decoded.
    pub signature: Vec<u8>,
}

/// Parses `t=..,kid=..,ed25519=..` (in that order, as we send it).
pub fn parse_header(value: &str) -> Option<ParsedSignature<'_>> {
    let mut parts = value.split(',');
    let unix_secs = parts.next()?.strip_prefix("t=")?.parse().ok()?;
    let kid = parts.next()?.strip_prefix("kid=")?;
    let signature = URL_SAFE_NO_PAD.decode(parts.next()?.strip_prefix("ed25519=")?).ok()?;
    if parts.next().is_some() || kid.is_empty() {
        return None;
    }
    Some(ParsedSignature { unix_secs, kid, signature })
}

/// Whether `header` is a valid signature of `body` by `public_key` (what a
/// receiver does; the tests use it).
pub fn verify(header: &str, body: &[u8], public_key: &[u8; 32]) -> bool {
    let Some(parsed) = parse_header(header) else { return false };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else { return false };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&parsed.signature) else {
        return false;
    };
    key.verify(&signed_bytes(parsed.unix_secs, body), &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let new = generate().unwrap();
        SigningKey::from_stored(new.kid, &new.private_key).unwrap()
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let k = key();
        let body = br#"{"subscription_id":"s","generation":1}"#;
        let header = k.signature_header(1_778_324_210, body);
        assert!(header.starts_with(&format!("t=1778324210,kid={},ed25519=", k.kid)));
        assert!(verify(&header, body, &k.public_key()));
        assert!(!verify(&header, b"{}", &k.public_key()), "another body");
        let other = key();
        assert!(!verify(&header, body, &other.public_key()), "another key");
        // The timestamp is signed too.
        let moved = header.replacen("t=1778324210", "t=1778324211", 1);
        assert!(!verify(&moved, body, &k.public_key()));
    }

    #[test]
    fn the_header_matches_the_protocols_shape() {
        let header = key().signature_header(5, b"x");
        let parsed = parse_header(&header).unwrap();
        assert_eq!(parsed.unix_secs, 5);
        assert!(parsed.kid.starts_with("ds_"));
        assert_eq!(parsed.signature.len(), 64);
        let sig = header.rsplit("ed25519=").next().unwrap();
        assert!(sig.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(parse_header("t=1,kid=,ed25519=AA"), None);
        assert_eq!(parse_header("kid=a,t=1,ed25519=AA"), None);
        assert_eq!(parse_header("t=1,kid=a,ed25519=AA,extra"), None);
    }

    #[test]
    fn thumbprint_of_the_rfc_8037_example() {
        // RFC 8037 Appendix A.3: the thumbprint of the A.2 public key.
        let x = URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        let public: [u8; 32] = x.try_into().unwrap();
        assert_eq!(kid_for(&public), "ds_kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn the_rfc_8032_test_vector_signs_as_expected() {
        // RFC 8032 §7.1 TEST 1: the key and the empty message's signature
        // (we sign `t.` + body, so check the primitive through from_stored).
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let k = SigningKey::from_stored("k".into(), &seed).unwrap();
        assert_eq!(
            k.public_key().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert!(SigningKey::from_stored("k".into(), &seed[..31]).is_err());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn generated_keys_differ_and_kids_follow_the_key() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a.private_key, b.private_key);
        assert_ne!(a.kid, b.kid);
        assert_eq!(a.kid, kid_for(&a.public_key));
    }
}
