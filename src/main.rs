//! The `session-proxy` binary: parses arguments, loads the config, starts logging and hands
//! over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use session_proxy::{Limits, Server};

/// A reverse proxy that gives any web app server-side sessions in Redis.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to the config file.
    #[arg(long, default_value = "proxy.toml")]
    config: PathBuf,
    /// Validate the config (and load the TLS certificate and key) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match session_proxy::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("session-proxy: invalid config {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    if let Some(files) = &config.server.tls {
        if let Err(e) = session_proxy::tls::acceptor(files) {
            eprintln!("session-proxy: invalid config {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    }
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging();
    // One process-wide rustls provider, in case a dependency builds a config without naming one.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("session-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config, Limits::default()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        match session_proxy::signals::run_with_signals(server, args.config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                ExitCode::FAILURE
            }
        }
    })
}

/// `RUST_LOG` sets the level (default `info`); `LOG_FORMAT=json` writes one JSON object a line.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}
