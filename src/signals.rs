//! Process signals for the binary: SIGTERM and SIGINT start a graceful drain, SIGHUP reloads
//! the config file (and, on an HTTPS server, the certificate and key).
//!
//! The handlers are installed before [`Server::run`] logs `listening`, so a supervisor (or a
//! test) that waits for that line can signal safely: an early SIGHUP would otherwise kill the
//! process, as that is its default action.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use crate::server::{Reloader, Server};

/// Runs `server` until SIGTERM or SIGINT, reloading from `config_path` on every SIGHUP. A
/// reload that fails (invalid file, certificate that does not load) is logged with the reason
/// and changes nothing.
pub async fn run_with_signals(server: Server, config_path: PathBuf) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let reloader: Reloader = server.reloader();
    let reload_task = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(path = %config_path.display(), "SIGHUP: reloading the config");
            if let Err(e) = reloader.reload_from(&config_path) {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
            }
        }
    });
    server
        .run(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        })
        .await;
    reload_task.abort();
    Ok(())
}
