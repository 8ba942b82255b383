//! Process signals for the binary: SIGTERM and SIGINT start a graceful drain, SIGHUP reloads
//! the config file (and, on an HTTPS server, the certificate and key).
//!
//! The handlers are installed before [`Server::run`] logs `listening`, so a supervisor (or a
//! test) that waits for that line can signal safely: an early SIGHUP would otherwise kill the
//! process, as that is its default action.
//!
//! A reload reads files (the config, the certificate and key) on a thread of its own: this
//! runtime is also the one that accepts connections, and a read that takes seconds (a slow
//! disk, a network file system, a large CA file) must not delay accepts. Reloads run one at a
//! time; SIGHUPs that arrive meanwhile make one more.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use crate::server::{ReloadError, Reloader, Server};

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
            match reload_off_thread(reloader.clone(), config_path.clone()).await {
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "config reload failed; keeping the running config"),
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

/// Runs [`Reloader::reload_from`] on a thread of its own and waits for it without blocking
/// this runtime. The thread is not joined: a reload stuck on a file never holds up the exit.
async fn reload_off_thread(reloader: Reloader, path: PathBuf) -> Result<(), String> {
    let (done, result) = tokio::sync::oneshot::channel::<Result<(), ReloadError>>();
    std::thread::Builder::new()
        .name("reload".to_owned())
        .spawn(move || {
            let _ = done.send(reloader.reload_from(&path));
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    match result.await {
        Ok(reloaded) => reloaded.map_err(|e| e.to_string()),
        Err(_) => Err("the reload thread ended without a result".to_owned()),
    }
}
