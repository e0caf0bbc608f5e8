//! The active signing key, cached for at most [`KEY_CACHE`].
//!
//! The key lives in `ds.signing_keys` (readable only by the extension
//! owner; the sidecar gets it through `ds.subscription_signing_key()`).
//! When the database has none, this sidecar generates one and offers it
//! with `ds.subscription_add_signing_key`, which keeps the first key any
//! sidecar stored: every sidecar then signs with the same key. A rotation
//! (`ds.subscription_rotate_signing_key()`) is picked up within
//! [`KEY_CACHE`]; the JWKS keeps retired keys for 15 minutes, longer than
//! that plus a receiver's 5-minute replay window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::signing::{self, SigningKey};
use super::store;
use crate::db::{Db, DbError};

/// How long a key is used before asking the database again.
pub const KEY_CACHE: Duration = Duration::from_secs(60);

/// Why no key is available.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The database call failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A key could not be made or read.
    #[error(transparent)]
    Key(#[from] signing::KeyError),
}

/// The cached active key.
#[derive(Default)]
pub struct Keys {
    cached: Mutex<Option<(Arc<SigningKey>, Instant)>>,
}

impl Keys {
    /// The active key (from the cache when it is fresh enough).
    pub async fn current(&self, db: &Db) -> Result<Arc<SigningKey>, KeysError> {
        // The lock also makes concurrent misses ask the database once.
        let mut cached = self.cached.lock().await;
        if let Some((key, at)) = cached.as_ref()
            && at.elapsed() < KEY_CACHE
        {
            return Ok(Arc::clone(key));
        }
        let (kid, private_key) = match store::signing_key(db).await? {
            Some(stored) => stored,
            None => {
                let new = signing::generate()?;
                let stored =
                    store::add_signing_key(db, &new.kid, &new.public_key, &new.private_key).await?;
                if stored.0 == new.kid {
                    tracing::info!(kid = %new.kid, "generated the webhook signing key");
                }
                stored
            }
        };
        let key = Arc::new(SigningKey::from_stored(kid, &private_key)?);
        *cached = Some((Arc::clone(&key), Instant::now()));
        Ok(key)
    }
}
