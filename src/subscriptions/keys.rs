//! Webhook signing keys (Ed25519). The sidecar generates them (with the
//! OS's randomness) and signs; the extension only keeps them, so every
//! sidecar of a database signs with the same key and receivers can verify
//! with the JWKS document whichever sidecar delivered.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::json;

use crate::error::{DsError, DsResult};
use crate::storage::{self, subscriptions as store};

/// Longest key id, in bytes.
const MAX_KID_BYTES: usize = 256;

fn active(client: &SpiClient<'_>) -> DsResult<Vec<(String, Vec<u8>)>> {
    Ok(store::active_signing_key(client)?.into_iter().collect())
}

/// The active signing key (no row if there is none yet).
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_signing_key()
-> Result<TableIterator<'static, (name!(kid, String), name!(private_key, Vec<u8>))>, ErrorReport> {
    Ok(TableIterator::new(Spi::connect(active)?))
}

/// Stores a new signing key unless one is active (race-safe: a sidecar
/// that loses gets the winner's key) and returns the active key.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_add_signing_key(
    kid: &str,
    public_key: &[u8],
    private_key: &[u8],
) -> Result<TableIterator<'static, (name!(kid, String), name!(private_key, Vec<u8>))>, ErrorReport>
{
    storage::require_primary("ds.subscription_add_signing_key")?;
    if kid.is_empty()
        || kid.len() > MAX_KID_BYTES
        || public_key.len() != 32
        || private_key.len() != 32
    {
        return Err(DsError::from(ds_core::Error::InvalidArguments(format!(
            "a signing key needs a kid of 1 to {MAX_KID_BYTES} bytes and 32-byte public and \
             private (seed) keys"
        )))
        .into());
    }
    Ok(TableIterator::new(Spi::connect_mut(|client| {
        store::insert_signing_key(client, kid, public_key, private_key)?;
        active(client)
    })?))
}

/// Retires the active signing key: the next sidecar to look makes a new
/// one; the old one stays in the JWKS for 15 minutes.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_rotate_signing_key() -> Result<(), ErrorReport> {
    storage::require_primary("ds.subscription_rotate_signing_key")?;
    Ok(Spi::connect_mut(store::retire_signing_key)?)
}

/// The public keys receivers verify webhook signatures with:
/// `{"keys": [{kty, crv, use, alg, kid, x}]}` (RFC 7517 / 8037).
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_jwks() -> Result<pgrx::JsonB, ErrorReport> {
    let keys = Spi::connect(store::published_keys)?;
    let keys: Vec<_> = keys
        .into_iter()
        .map(|(kid, x)| {
            json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid, "x": x})
        })
        .collect();
    Ok(pgrx::JsonB(json!({"keys": keys})))
}
