//! `ds-sidecar`: the HTTP face of durable_streams.
//!
//! Placeholder until the sidecar issue lands: it only reports that it is not
//! implemented yet, so `make run` can detect it and skip starting it.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("ds-sidecar {}: the HTTP sidecar is not implemented yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
