//! Gives freed heap memory back to the operating system.
//!
//! glibc keeps what a burst of connections freed: after 10,000 live clients
//! come and go, the sidecar would sit at its high-water mark (~300 MB) for
//! good, and the next burst would grow it further through fragmentation.
//! When the number of live clients has halved since the last trim (so there
//! is memory to give back), a blocking-pool thread calls `malloc_trim(0)`,
//! which returns the free pages of every arena. It is not done while clients
//! stay connected: trimming a busy heap holds the arena locks and would stall
//! the deliveries it races with.
#![allow(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Time between two looks at the number of live clients (cheap: two
/// semaphore reads), so a burst of a few seconds is still seen.
const INTERVAL: Duration = Duration::from_secs(1);

/// Fewer live clients than this at the peak never warrant a trim.
const MIN_PEAK: usize = 100;

/// Checks every [`INTERVAL`] until shutdown; `live` counts live clients.
pub async fn trim_after_bursts(live: impl Fn() -> usize, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = live();
        peak = peak.max(now);
        if peak >= MIN_PEAK && now <= peak / 2 {
            if let Err(e) = tokio::task::spawn_blocking(trim).await {
                tracing::warn!(error = %e, "heap trim failed");
            }
            peak = now;
        }
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
