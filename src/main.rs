//! The `session-proxy` binary: parses arguments, loads the config, starts logging and hands
//! over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use session_proxy::config::ConfigError;
use session_proxy::manage::Operation;
use session_proxy::{Limits, Server};

mod alloc;

/// A reverse proxy that gives any web app server-side sessions in Redis.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to the config file.
    #[arg(long, default_value = "proxy.toml", global = true)]
    config: PathBuf,
    /// Validate the config (and load the TLS certificate and key) and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and revoke sessions in the store the config names (not with memory://).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// Print a session as JSON: its id, its TTL in seconds and its data.
    Show { id: String },
    /// Destroy a session (log it out).
    Revoke { id: String },
    /// Destroy every session holding VALUE at `session.index` (log a user out everywhere).
    RevokeIndex { value: String },
}

/// Exit status for a config that does not validate (or a certificate that does not load),
/// distinct from 1 (could not start for another reason).
const EXIT_INVALID_CONFIG: u8 = 2;

#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.check {
        // Before the config loads, so that even a config error is a log line in the chosen
        // format (`LOG_FORMAT=json` collectors get JSON from the first line). A `sessions`
        // command prints its answer on stdout and logs only warnings by default.
        init_logging(if args.command.is_some() { "warn" } else { "info" });
    }
    let config = match load_and_check(&args.config) {
        Ok(c) => c,
        Err(e) => {
            if args.check {
                // A file that cannot be read names itself; anything else is about its content.
                let unreadable = matches!(e.downcast_ref::<ConfigError>(), Some(ConfigError::Read { .. }));
                if unreadable {
                    eprintln!("session-proxy: {e}");
                } else {
                    eprintln!("session-proxy: invalid config {}: {e}", args.config.display());
                }
            } else {
                tracing::error!(path = %args.config.display(), error = %e, "invalid config");
            }
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    if args.check {
        // Valid, so exit 0; `Server::bind` logs the same warnings when the proxy starts.
        for warning in config.warnings() {
            eprintln!("session-proxy: warning: {}: {warning}", args.config.display());
        }
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Sessions { action }) = args.command {
        let operation = match action {
            SessionsAction::Show { id } => Operation::Show { id },
            SessionsAction::Revoke { id } => Operation::Revoke { id },
            SessionsAction::RevokeIndex { value } => Operation::RevokeIndex { value },
        };
        return manage(&config, operation);
    }
    // One process-wide rustls provider, in case a dependency builds a config without naming one.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // This runtime accepts connections, handles signals, reloads and the admin listener; the
    // requests are served by the server's own worker threads, one runtime per core.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
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

/// Runs a `sessions` command: its output on stdout, or why it failed on stderr (exit 1).
fn manage(config: &session_proxy::Config, operation: Operation) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("session-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(session_proxy::manage::run(config, operation)) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("session-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config, validated, with its TLS certificate and key loaded once to prove they work.
fn load_and_check(path: &Path) -> Result<session_proxy::Config, Box<dyn std::error::Error>> {
    let config = session_proxy::config::load(path)?;
    if let Some(files) = &config.server.tls {
        session_proxy::tls::check(files)?;
    }
    Ok(config)
}

/// `RUST_LOG` sets the level (default `default_level`); `LOG_FORMAT=json` writes one JSON object a line.
/// Text logs are coloured only on a terminal: escape codes would litter files and journald.
fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // rustls warns once per TLS connection about what the client sent (an IP address as SNI,
    // as wrk and some load balancers send): any client could fill the log. Its errors stay,
    // and a RUST_LOG that names rustls decides for itself.
    if !std::env::var("RUST_LOG").is_ok_and(|spec| spec.contains("rustls")) {
        if let Ok(quiet) = "rustls=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}
