//! A real `redis-server` for integration tests: on a free 127.0.0.1 port (never 6379), without
//! persistence, in its own temporary directory; plain, or TLS-only with a password as a local
//! stand-in for Upstash. Tests can stop, restart (same port), pause and resume it, and look at
//! keys through `redis-cli`.
//!
//! Included by test files through `tests/common/mod.rs`; it holds no tests itself.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// How long a started server may take to answer PING before the test gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);
/// Fresh ports to try when another process takes the probed port before redis-server binds it.
const START_ATTEMPTS: usize = 5;
/// The port a developer's own Redis uses; tests never touch it.
const DEFAULT_REDIS_PORT: u16 = 6379;
/// Lowest port picked below the ephemeral range: above the well-known and most registered
/// service ports.
const FIXED_PORT_FLOOR: u16 = 20_000;
/// Below-range ports are only used when there are at least this many, so random picks by
/// concurrent tests rarely meet.
const FIXED_PORT_MIN_SPAN: u16 = 2_000;
/// Random below-range ports tried before falling back to one the OS picks.
const FIXED_PORT_PROBES: u32 = 50;

const MISSING_REDIS: &str = "redis-server not found: install it (apt-get install -y redis-server)";

/// A running (or stopped, or paused) redis-server. Dropping it kills the process and removes
/// its directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    tls: Option<TlsSetup>,
}

/// Files and secret of a TLS-only server.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub password: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSetup {
    /// redis-server's arguments to listen on `port` over TLS only (no client certificates)
    /// and require the password.
    pub(crate) fn server_args(&self, command: &mut Command, port: u16) {
        command
            .arg("--port")
            .arg("0")
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.ca)
            .arg("--tls-auth-clients")
            .arg("no")
            .arg("--requirepass")
            .arg(&self.password);
    }

    /// redis-cli's arguments to reach such a server.
    pub(crate) fn cli_args(&self, command: &mut Command) {
        command.arg("--tls").arg("--cacert").arg(&self.ca);
        // From the environment rather than `-a`: no warning, not in the process list.
        command.env("REDISCLI_AUTH", &self.password);
    }
}

impl RedisServer {
    /// A plain-TCP redis-server, ready (answers PING).
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// A TLS-only redis-server (`--port 0 --tls-port P`) with a fresh test CA, a server
    /// certificate for 127.0.0.1 and localhost, no client certificates, and `requirepass`.
    pub fn start_tls(password: &str) -> RedisServer {
        Self::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redis-test-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let tls = password.map(|password| write_tls_files(dir.path(), password));
        let mut server = RedisServer { child: None, port: 0, dir, tls };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if server.spawn_and_wait() {
                return server;
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts; last log:\n{}", server.log());
    }

    /// `redis://127.0.0.1:P`, or `rediss://default:PASSWORD@127.0.0.1:P` for a TLS server.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(tls) => format!(
                "rediss://default:{}@127.0.0.1:{}",
                utf8_percent_encode(&tls.password, NON_ALPHANUMERIC),
                self.port
            ),
        }
    }

    /// The test CA's PEM file, for `store.ca_file` (TLS servers only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.ca.clone())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it; `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted) and waits until
    /// it answers.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; a short retry covers a slow release.
        for _ in 0..START_ATTEMPTS {
            if self.spawn_and_wait() {
                return;
            }
            thread::sleep(READY_POLL);
        }
        panic!("redis-server did not restart on port {}; last log:\n{}", self.port, self.log());
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Runs one command through `redis-cli` against this server and returns its trimmed stdout
    /// (`cli(&["TTL", "key"])` gives `"42"`).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self
            .cli_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("run redis-cli: {err}"));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// How many times `command` ran since the last `CONFIG RESETSTAT` (`INFO commandstats`;
    /// commands run inside scripts count too).
    pub fn command_calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|line| {
                line.strip_prefix(&format!("cmdstat_{command}:calls="))?.split(',').next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("redis-cli");
        command.arg("-h").arg("127.0.0.1").arg("-p").arg(self.port.to_string());
        if let Some(tls) = &self.tls {
            tls.cli_args(&mut command);
        }
        command.args(args);
        command
    }

    /// Spawns redis-server on `self.port` and waits until it answers PING. `false` when the
    /// process exited (typically: the port was taken).
    fn spawn_and_wait(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            // Lets tests stall the server with DEBUG SLEEP.
            .arg("--enable-debug-command")
            .arg("local");
        match &self.tls {
            None => {
                command.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => tls.server_args(&mut command, self.port),
        }
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let child = match child {
            Ok(child) => child,
            Err(err) if err.kind() == ErrorKind::NotFound => panic!("{MISSING_REDIS}"),
            Err(err) => panic!("spawn redis-server: {err}"),
        };
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.cli(&["PING"]) == "PONG" {
                return true;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            thread::sleep(READY_POLL);
        }
    }

    fn signal(&self, signal: &str) {
        let Some(child) = &self.child else {
            panic!("redis-server is not running");
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|err| panic!("run kill {signal}: {err}"));
        assert!(status.success(), "kill {signal} failed");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) process.
        self.stop();
    }
}

/// A port nothing listens on right now, never Redis's default port, and below the kernel's
/// ephemeral range when there is room: tests stop a server and restart it on the same port,
/// and a port in the ephemeral range can be handed out meanwhile to any `bind(0)` or
/// outgoing connection on the machine. Worse, the proxy's own reconnect attempts can then
/// connect to themselves (a TCP self-connect), which looks like a server that echoes every
/// command. Outside the range neither can happen.
pub fn free_port() -> u16 {
    let (ephemeral_low, _) = ephemeral_port_range();
    if ephemeral_low > FIXED_PORT_FLOOR + FIXED_PORT_MIN_SPAN {
        let seed = RandomState::new();
        for attempt in 0u32..FIXED_PORT_PROBES {
            let span = u64::from(ephemeral_low - FIXED_PORT_FLOOR);
            let offset = u16::try_from(seed.hash_one(attempt) % span).expect("span fits in u16");
            let port = FIXED_PORT_FLOOR + offset;
            if port != DEFAULT_REDIS_PORT && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address of a bound listener").port();
        if port != DEFAULT_REDIS_PORT {
            return port;
        }
    }
}

/// The kernel's ephemeral port range (Linux); the IANA range where it cannot be read.
fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|part| part.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((49152, 65535))
}

/// Writes a test CA and a server certificate it signed (for 127.0.0.1 and localhost) into
/// `dir`.
pub(crate) fn write_tls_files(dir: &Path, password: &str) -> TlsSetup {
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::CommonName, "session-proxy test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the CA");

    let server_key = KeyPair::generate().expect("generate server key");
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    // ClientAuth too: cluster nodes present it to each other on the cluster bus, which always
    // asks for a client certificate.
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let server_cert = params.signed_by(&server_key, &ca).expect("sign the server certificate");

    let setup = TlsSetup {
        password: password.to_owned(),
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&setup.ca, ca.pem()).expect("write ca.pem");
    std::fs::write(&setup.cert, server_cert.pem()).expect("write server.pem");
    std::fs::write(&setup.key, server_key.serialize_pem()).expect("write server.key");
    setup
}
