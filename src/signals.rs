//! Process signals for the binary: SIGTERM and SIGINT start a graceful drain, SIGHUP reloads
//! the config file.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use crate::server::{Reloader, Server};

/// Runs `server` until SIGTERM or SIGINT, reloading from `config_path` on every SIGHUP.
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
