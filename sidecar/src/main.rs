//! `ds-sidecar` entry point: parse the configuration, set up tracing, bind,
//! and hand over to [`ds_sidecar::run`] until Ctrl-C or SIGTERM.
#![forbid(unsafe_code)]

use clap::Parser;
use ds_sidecar::Config;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("ds_sidecar=info,tower_http=info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }

    if let Err(e) = config.check_exposure() {
        tracing::error!("{e}");
        eprintln!("ds-sidecar: {e}");
        return std::process::ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let metrics_listener = match config.metrics_listen.0 {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for metrics (--metrics-listen; `off` disables it)");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal(shutdown.clone()));
    match ds_sidecar::run(config, listener, metrics_listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ds-sidecar stopped");
            eprintln!("ds-sidecar: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
