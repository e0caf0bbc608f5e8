//! `ds-token`: prints an HS256 JWT for `ds-sidecar --auth jwt`, signed with
//! the same secret (`DS_JWT_SECRET`, `--secret-file`). For development,
//! tests and benchmarks; production tokens come from your identity provider.
//!
//! ```sh
//! DS_JWT_SECRET=... ds-token --role tenant_a --sub alice --expires-in 3600
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use ds_sidecar::config::Secret;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// Prints an HS256 token naming a Postgres role.
#[derive(Debug, Parser)]
#[command(name = "ds-token", version)]
struct Args {
    /// The Postgres role the token's requests run as.
    #[arg(long)]
    role: String,
    /// `sub` (the rate-limit key).
    #[arg(long)]
    sub: Option<String>,
    /// Seconds until `exp`.
    #[arg(long, default_value_t = 3600)]
    expires_in: u64,
    /// `aud`.
    #[arg(long)]
    aud: Option<String>,
    /// `iss`.
    #[arg(long)]
    iss: Option<String>,
    /// The claim that names the role (as `--jwt-role-claim`).
    #[arg(long, default_value = "role")]
    role_claim: String,
    /// The HS256 secret (as `--jwt-secret`).
    #[arg(long, env = "DS_JWT_SECRET", hide_env_values = true)]
    secret: Option<Secret>,
    /// File holding the secret (as `--jwt-secret-file`).
    #[arg(long, env = "DS_JWT_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), None) => s.0.clone().into_bytes(),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(mut bytes) => {
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            Err(e) => {
                eprintln!("ds-token: cannot read {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("ds-token: give the secret in DS_JWT_SECRET, --secret or --secret-file");
            return std::process::ExitCode::FAILURE;
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = Map::new();
    claims.insert(args.role_claim, Value::from(args.role));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + args.expires_in));
    for (name, value) in [("sub", args.sub), ("aud", args.aud), ("iss", args.iss)] {
        if let Some(v) = value {
            claims.insert(name.into(), Value::from(v));
        }
    }
    match jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    ) {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ds-token: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
