//! [`Shutdown`]: the one signal every role watches, and the tracker of the tasks that must finish.
//!
//! Passed down explicitly (never a global), like mini-redis's `Shutdown`: a role stops taking new work
//! when `token` is cancelled, and `serve` waits for `tracker` to drain, bounded by `shutdown_timeout`.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled on SIGTERM or Ctrl-C, or when a role fails and takes the process down.
    pub token: CancellationToken,
    /// The roles' tasks; `serve` waits for them before exiting.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// Cancels `token` on SIGINT or SIGTERM.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(message = "Shutdown signal received; draining.");
            token.cancel();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(message = "Cannot listen for SIGTERM; only Ctrl-C stops the process.", error = %error);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
