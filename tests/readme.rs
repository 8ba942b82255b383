//! The README as a newcomer follows it: its example upstreams (Node and PHP, read out of
//! README.md so they cannot drift) serve sessions through the proxy; the quick start's demo
//! runs on ports it is given, says which address is taken when one is, and writes plain logs
//! when its output is not a terminal; the cookie test vector printed there is right; the binary
//! is installed before it is used; and no document points outside the repository.
//!
//! `node` and `php` must be installed (`scripts/test.sh` installs them); a missing one fails the
//! test with that message rather than skipping it. The example upstreams and the demo listen on
//! port 0 and say which port they got; every child process is killed by its PID when dropped.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, Request, StatusCode};

/// Anything that takes longer than this is a hang: the test fails instead of waiting forever.
const HANG_GUARD: Duration = Duration::from_secs(30);

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn readme() -> String {
    std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap()
}

/// The fenced code blocks of `markdown` whose info string is `lang`, in order.
fn code_blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (None, _) => {}
            (Some(_), Some("")) => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// The one `lang` block of the README: the example app in that language.
fn example(lang: &str) -> String {
    let mut blocks = code_blocks(&readme(), lang);
    assert_eq!(blocks.len(), 1, "the README should have exactly one ```{lang} block, its example app");
    blocks.pop().unwrap()
}

/// A child process, killed (by its PID) and reaped when dropped; its stdout and stderr lines
/// arrive, in order per stream, on `lines`.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn spawn(command: &mut Command, what: &str) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {what} ({e}); scripts/test.sh installs what the tests need")
            });
        let (tx, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Process { child, lines }
    }

    /// The first line (of either stream) for which `find` gives something.
    fn wait_for<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(HANG_GUARD) {
                Ok(line) => {
                    if let Some(found) = find(&line) {
                        return found;
                    }
                    seen.push(line);
                }
                Err(_) => panic!(
                    "{what}: not seen within {HANG_GUARD:?} (or the process ended); output:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Every remaining line, once the process has ended.
    fn rest(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(HANG_GUARD) {
            lines.push(line);
        }
        lines
    }

    fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name}");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..(HANG_GUARD.as_millis() / 20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the process did not exit within {HANG_GUARD:?}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `name=value` pair of the session cookie a response set, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__session="))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

async fn get_with_cookie(url: &str, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(url);
    if let Some(cookie) = cookie {
        req = req.header(COOKIE, cookie);
    }
    send(req.body(empty()).unwrap()).await
}

/// A proxy with one session route to `upstream`, with the default (`secure = true`) cookie.
async fn proxy_for(upstream: &str) -> TestProxy {
    start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{upstream}\"\n")).await
}

/// Two visits through the proxy: the app counts them in the session the proxy keeps.
async fn counts_visits(proxy: &TestProxy) {
    let (status, headers, body) = get_with_cookie(&proxy.url("/"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "visits: 1\n"));
    let cookie = session_cookie(&headers).expect("the first visit gets a session cookie");
    let (status, _, body) = get_with_cookie(&proxy.url("/"), Some(&cookie)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "visits: 2\n"));
    let (_, _, body) = get_with_cookie(&proxy.url("/"), Some(&cookie)).await;
    assert_eq!(body, "visits: 3\n");
}

// ---------------------------------------------------------------------------------------------
// The example upstreams, as printed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_node_example_counts_visits_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.js");
    std::fs::write(&script, example("js")).unwrap();
    let mut app = Process::spawn(Command::new("node").arg(&script).env("PORT", "0"), "node");
    let url = app.wait_for("the Node app's address", |l| l.strip_prefix("app on ").map(str::to_owned));
    counts_visits(&proxy_for(&url).await).await;
}

/// PHP's built-in server (`php -S`) on port 0 names the port it took on stderr.
fn php_server(dir: &Path, router: &str) -> (Process, String) {
    let mut php = Process::spawn(
        Command::new("php").arg("-S").arg("127.0.0.1:0").arg(router).current_dir(dir),
        "php (the php-cli package)",
    );
    let url = php.wait_for("PHP's server address", |l| {
        let (_, rest) = l.split_once("Development Server (")?;
        Some(rest.split_once(')')?.0.to_owned())
    });
    (php, url)
}

#[tokio::test]
async fn the_php_example_counts_visits_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.php"), example("php")).unwrap();
    let (_php, url) = php_server(dir.path(), "app.php");
    counts_visits(&proxy_for(&url).await).await;
}

/// What the README's PHP example used to be: it sends back what it decoded, which for a
/// visitor without a session is `[]` (PHP's `json_encode` of an empty array). That counts as
/// `{}`, so the visitor gets an answer (and an empty session), never a 502.
#[tokio::test]
async fn a_php_app_that_echoes_an_empty_session_as_an_array_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let echo = "<?php\n$s = json_decode($_SERVER['HTTP_X_SESSION'], true);\nheader('X-Session-Update: ' . json_encode($s));\necho json_encode($s), \"\\n\";\n";
    std::fs::write(dir.path().join("echo.php"), echo).unwrap();
    let (_php, url) = php_server(dir.path(), "echo.php");
    let proxy = proxy_for(&url).await;
    let (status, _, body) = get_with_cookie(&proxy.url("/"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]\n"), "PHP wrote [] and the proxy took it");
}

// ---------------------------------------------------------------------------------------------
// The quick start's demo
// ---------------------------------------------------------------------------------------------

/// `target/<profile>/examples/demo`, built once per test run: `cargo test --all-targets`
/// builds the examples only as test harnesses, so the demo itself is built here, by the cargo
/// that runs the tests (the build is up to date, and quick, when it was built before).
fn demo_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap();
            let mut build = Command::new(env!("CARGO"));
            // Into the target directory these tests were built in, whatever it is.
            build
                .args(["build", "--quiet", "--locked", "--example", "demo", "--target-dir"])
                .arg(profile_dir.parent().unwrap())
                .current_dir(REPO);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let out = build.output().expect("run cargo");
            assert!(
                out.status.success(),
                "cargo build --example demo: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            profile_dir.join("examples").join("demo")
        })
        .clone()
}

/// The demo with these flags, on the repository's `proxy.toml`.
fn demo(flags: &[&str]) -> Process {
    let mut command = Command::new(demo_binary());
    command.args(flags).arg("--config").arg(Path::new(REPO).join("proxy.toml"));
    for var in ["APP_ADDR", "LISTEN_ADDR", "ADMIN_ADDR", "SESSION_SECRET", "SESSION_STORE_URL"] {
        command.env_remove(var);
    }
    Process::spawn(&mut command, "the demo")
}

const ALL_PORTS_FREE: [&str; 6] =
    ["--app-addr", "127.0.0.1:0", "--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"];

/// The quick start's walk, on the ports the demo was given (0: free ones, which it prints),
/// with output to pipes: the logs are plain text, no colour codes. Assets are on their own
/// `session = false` routes in the shipped `proxy.toml`: they get no session and do not count.
#[tokio::test]
async fn the_demo_runs_on_the_ports_it_is_given_with_plain_logs() {
    let mut demo = demo(&ALL_PORTS_FREE);
    let addrs = demo.wait_for("the demo's addresses", |l| l.strip_prefix("demo app on ").map(str::to_owned));
    let url = |name: &str| {
        let (_, rest) = addrs.split_once(&format!("{name} on ")).unwrap();
        rest.split(';').next().unwrap().to_owned()
    };
    let (proxy, admin) = (url("proxy"), url("admin"));
    assert!(!proxy.ends_with(":8080") && !admin.ends_with(":9901"), "{addrs}");

    let (_, headers, body) = get_with_cookie(&format!("{proxy}/"), None).await;
    assert_eq!(body, "hello anonymous: visits = 1\n");
    let cookie = session_cookie(&headers).unwrap();
    for asset in ["/favicon.ico", "/static/hello.txt"] {
        let (status, headers, body) = get_with_cookie(&format!("{proxy}{asset}"), Some(&cookie)).await;
        assert_eq!((status, body), (StatusCode::OK, format!("{asset}: no session\n")));
        assert!(session_cookie(&headers).is_none());
    }
    let (_, _, body) = get_with_cookie(&format!("{proxy}/"), Some(&cookie)).await;
    assert_eq!(body, "hello anonymous: visits = 2\n", "the assets did not count");
    // The protected page: sent to log in, with where to come back to.
    let (status, headers, _) = get_with_cookie(&format!("{proxy}/account"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "/login?next=%2Faccount");
    let (status, _, body) = get_with_cookie(&format!("{proxy}/login?next=%2Faccount"), Some(&cookie)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "log in: /login?name=YOU&next=%2Faccount\n"));
    let (status, headers, _) =
        get_with_cookie(&format!("{proxy}/login?name=ada&next=%2Faccount"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "/account");
    let cookie = session_cookie(&headers).expect("a new id at log-in");
    let (status, _, body) = get_with_cookie(&format!("{proxy}/account"), Some(&cookie)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "account of ada (from the x-user header)\n"));
    let (_, _, body) = get_with_cookie(&format!("{proxy}/"), Some(&cookie)).await;
    assert_eq!(body, "hello ada: visits = 3\n");
    let (_, headers, _) = get_with_cookie(&format!("{proxy}/logout"), Some(&cookie)).await;
    assert!(headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (status, _, _) = get_with_cookie(&format!("{proxy}/account"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::FOUND, "logged out: sent to log in again");
    let (status, _, _) = get(&format!("{admin}/metrics")).await;
    assert_eq!(status, StatusCode::OK);

    demo.signal("INT");
    assert!(demo.wait_exit().success());
    let output = demo.rest().join("\n");
    assert!(output.contains("access") && output.contains("session=created"), "{output}");
    assert!(!output.contains('\u{1b}'), "no colour codes when not on a terminal: {output:?}");
}

/// A port that is taken: the error names the address and which setting chose it, in words
/// (never `Os { code: 98, .. }`), and the demo says how to move it.
#[test]
fn a_busy_port_is_named_in_the_error() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    for (flag, setting) in [("--app-addr", "the demo app, --app-addr"), ("--listen-addr", "server.listen")] {
        let mut flags = ALL_PORTS_FREE.to_vec();
        let at = flags.iter().position(|f| *f == flag).unwrap();
        flags[at + 1] = &taken;
        let mut demo = demo(&flags);
        let status = demo.wait_exit();
        assert_eq!(status.code(), Some(1));
        let output = demo.rest().join("\n");
        assert!(output.contains(&format!("cannot listen on {taken} ({setting})")), "{output}");
        assert!(output.contains("already listening") && output.contains("--help"), "{output}");
        assert!(!output.contains("Os {") && !output.contains("os error"), "{output}");
    }

    // The binary, too: one log line naming the address and the key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let text = format!(
        "[server]\nlisten = \"{taken}\"\n\n[session]\nsecrets = [\"0123456789abcdef0123456789abcdef\"]\n\n[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let mut proxy = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info"),
        "session-proxy",
    );
    assert_eq!(proxy.wait_exit().code(), Some(1));
    let output = proxy.rest().join("\n");
    assert!(
        output.contains(&format!("cannot listen on {taken} (server.listen): another process")),
        "{output}"
    );
    assert!(!output.contains("os error") && !output.contains('\u{1b}'), "{output:?}");
    drop(busy);
}

#[test]
fn the_demo_help_names_its_flags_and_variables() {
    let out = Command::new(demo_binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "--app-addr",
        "--listen-addr",
        "--admin-addr",
        "APP_ADDR",
        "LISTEN_ADDR",
        "ADMIN_ADDR",
        "127.0.0.1:3000",
    ] {
        assert!(help.contains(name), "{name} missing from --help:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------------
// What the README says
// ---------------------------------------------------------------------------------------------

/// The test vector printed in the README, recomputed from the format printed beside it.
#[test]
fn the_readme_test_vector_is_remix_signing() {
    let readme = readme();
    let line = readme.lines().find(|l| l.contains("`__session=")).expect("the README prints the test vector");
    let printed = line.split('`').find(|part| part.starts_with("__session=")).unwrap();

    let payload = base64::engine::general_purpose::STANDARD.encode("\"0123456789abcdef\"");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cr3t");
    let signature =
        base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, payload.as_bytes()));
    let value = format!("{payload}.{}", signature.trim_end_matches('='));
    let encoded: String = percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2E", ".");
    assert_eq!(printed, format!("__session={encoded}"));
}

/// Before any `session-proxy` command line, the README says how to get the binary.
#[test]
fn the_readme_installs_the_binary_before_using_it() {
    let readme = readme();
    let install = readme.find("cargo install --locked --path .").expect("an install step");
    let first_use = readme.find("session-proxy --").expect("a command line");
    assert!(install < first_use, "`session-proxy --...` is used before the install step");
    assert!(readme.contains("target/release/session-proxy"), "the way without installing");
}

/// Every Markdown file of the repository links only to files inside it, and none names a path
/// above it (a user's clone has nothing there). Not the vendored crates' own documents
/// (`vendor/*/`: their links point into their upstream repositories); `vendor/README.md` is ours.
#[test]
fn documents_reference_nothing_outside_the_repository() {
    let repo = Path::new(REPO).canonicalize().unwrap();
    let listed = Command::new("git").args(["ls-files", "*.md"]).current_dir(&repo).output().unwrap();
    let vendored = repo.join("vendor");
    let mut files: Vec<PathBuf> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|f| repo.join(f))
        .filter(|f| !f.starts_with(&vendored) || f.parent() == Some(vendored.as_path()))
        .collect();
    // Also before `git add`, and in a copy without .git.
    files.push(repo.join("README.md"));
    files.sort();
    files.dedup();
    for file in files.iter().filter(|f| f.exists()) {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains("../shared") && !text.contains("DESIGN.md"),
            "{} names a file outside the repository",
            file.display()
        );
        for target in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let target = target.split('#').next().unwrap();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file.parent().unwrap().join(target);
            let resolved = resolved
                .canonicalize()
                .unwrap_or_else(|_| panic!("{} links to {target}, which does not exist", file.display()));
            assert!(resolved.starts_with(&repo), "{} links outside the repository: {target}", file.display());
        }
    }
}

/// The Docker build copies every directory `cargo build` reads: the sources, the examples
/// Cargo.toml names, and each path dependency (the vendored fred through `[patch.crates-io]`).
#[test]
fn the_dockerfile_copies_what_the_build_reads() {
    let repo = Path::new(REPO);
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|line| !line.starts_with("--from"))
        .flat_map(|line| line.split_whitespace())
        .collect();
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    let mut needed = vec!["src".to_owned(), "examples".to_owned()];
    for line in manifest.lines() {
        if let Some((_, rest)) = line.split_once("path = \"") {
            let path = rest.split('"').next().unwrap();
            needed.push(path.split('/').next().unwrap().to_owned());
        }
    }
    for dir in &needed {
        assert!(
            copied.iter().any(|c| c.trim_start_matches("./").split('/').next() == Some(dir.as_str())),
            "the Dockerfile does not COPY {dir}, which the build reads"
        );
    }
}
