//! A scripted app for the session tests: what it answers is set by the request's headers, and a
//! request can be held in it until the test lets it go.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::faults::{count_panics, guarded, session_cookie_pair, session_id};
use super::redis_server::RedisServer;
use super::{client, empty, full, get, start_proxy, upstream, TestBody, TestProxy, Upstream};

/// A request held in the app: it tells the test it has the session, then waits to be let go.
#[derive(Default)]
pub struct Gate {
    pub loaded: Notify,
    pub release: Notify,
}

/// The app, scripted by request headers (each response carries `x-seen`, the session it got):
/// - `x-add: KEY`: echoes the whole session with one more key, `KEY: "KEY"` (the typical
///   legacy app);
/// - `x-patch-add: KEY`: answers with the patch `{"KEY": "KEY"}`;
/// - `x-delay-ms: N`: answers after N ms;
/// - `x-hold`: waits at the [`Gate`] before answering;
/// - `x-echo`: answers with the session it got as the update, unchanged;
/// - `x-want-update`, `x-want-patch`, `x-want-regenerate`: answers with those headers.
///
/// The body lists the request headers it received.
pub async fn app(gate: Arc<Gate>) -> Upstream {
    upstream(move |req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            let header = |name: &str| {
                req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let seen = header("x-session").unwrap_or_default();
            if let Some(ms) = header("x-delay-ms") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            if header("x-hold").is_some() {
                gate.loaded.notify_one();
                gate.release.notified().await;
            }
            let mut resp = Response::builder().header("x-seen", &seen);
            if let Some(key) = header("x-add") {
                let mut session: Value = serde_json::from_str(&seen).unwrap();
                session[key.as_str()] = json!(key);
                resp = resp.header("x-session-update", session.to_string());
            }
            if let Some(key) = header("x-patch-add") {
                resp = resp.header("x-session-patch", json!({ key.as_str(): key }).to_string());
            }
            if header("x-echo").is_some() {
                resp = resp.header("x-session-update", &seen);
            }
            for (asked, name) in [
                ("x-want-update", "x-session-update"),
                ("x-want-patch", "x-session-patch"),
                ("x-want-regenerate", "x-session-regenerate"),
            ] {
                if let Some(value) = header(asked) {
                    resp = resp.header(name, value);
                }
            }
            // The body lists the request headers the app received, one `name: value` a line.
            let received: String = req
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
                .collect();
            resp.body(full(received)).unwrap()
        }
    })
    .await
}

/// Where the sessions of an [`AppEnv`] live.
pub enum Backend {
    Redis(RedisServer),
    Memory,
    /// A store the test runs itself (a cluster, Sentinel), by its `store.url`.
    Url(String),
}

/// A proxy, with an admin listener, in front of [`app`] on its own store.
pub struct AppEnv {
    pub backend: Backend,
    pub gate: Arc<Gate>,
    pub proxy: TestProxy,
    _app: Upstream,
}

/// What one request got back.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The values of request header `name` the app received (from the body's list).
    pub fn received(&self, name: &str) -> Vec<&str> {
        self.body.lines().filter_map(|line| line.strip_prefix(name)?.strip_prefix(": ")).collect()
    }

    /// The session the app was sent (`x-seen`).
    pub fn seen(&self) -> &str {
        self.headers.get("x-seen").map_or("", |v| v.to_str().unwrap())
    }

    pub fn new_cookie(&self) -> Option<String> {
        session_cookie_pair(&self.headers)
    }

    pub fn assert_no_cookie(&self) {
        assert!(self.headers.get("set-cookie").is_none(), "unexpected Set-Cookie: {:?}", self.headers);
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl AppEnv {
    /// On Redis (a server of its own) or `memory://`; `server` and `session` are more lines
    /// for those tables of the config.
    pub async fn start(redis: bool, server: &str, session: &str) -> AppEnv {
        AppEnv::start_with(redis, server, session, "[[route]]\nprefix = \"/\"\nupstream = \"{app}\"\n").await
    }

    /// As [`AppEnv::start`], with `routes` for the `[[route]]` tables (`{app}` stands for the
    /// app's URL).
    pub async fn start_with(redis: bool, server: &str, session: &str, routes: &str) -> AppEnv {
        let backend = if redis { Backend::Redis(RedisServer::start()) } else { Backend::Memory };
        AppEnv::start_on(backend, "timeout_ms = 5000", server, session, routes).await
    }

    /// On `backend`, with `store` for the lines of the `[store]` table after `url`.
    pub async fn start_on(
        backend: Backend,
        store: &str,
        server: &str,
        session: &str,
        routes: &str,
    ) -> AppEnv {
        count_panics();
        let gate = Arc::new(Gate::default());
        let app = app(gate.clone()).await;
        let url = match &backend {
            Backend::Redis(redis) => redis.url(),
            Backend::Memory => "memory://".to_owned(),
            Backend::Url(url) => url.clone(),
        };
        let proxy = start_proxy(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server}

[store]
url = "{url}"
{store}

[session]
secrets = ["test-secret"]
secure = false
{session}

{routes}
"#,
            routes = routes.replace("{app}", &app.url())
        ))
        .await;
        AppEnv { backend, gate, proxy, _app: app }
    }

    /// The app's URL, for configs written by a test (a reload).
    pub fn app_url(&self) -> String {
        self._app.url()
    }

    /// A GET of `path` with `cookie` and more headers.
    pub async fn get(&self, path: &str, cookie: Option<&str>, headers: &[(&str, &str)]) -> Answer {
        self.request(Method::GET, path, cookie, headers).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(self.proxy.url(path));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        send(req.body(empty()).unwrap()).await
    }

    pub fn redis(&self) -> Option<&RedisServer> {
        match &self.backend {
            Backend::Redis(redis) => Some(redis),
            Backend::Memory | Backend::Url(_) => None,
        }
    }

    pub async fn call(&self, cookie: Option<&str>, headers: &[(&str, &str)]) -> Answer {
        self.get("/app", cookie, headers).await
    }

    /// A new session holding `value`: its cookie.
    pub async fn create(&self, value: &str) -> String {
        let answer = self.call(None, &[("x-want-update", value)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.new_cookie().expect("a new session sets a cookie")
    }

    /// The session behind `cookie` as the app is sent it (`{}`: none), and, on Redis, checks
    /// that the stored text is the same.
    pub async fn session(&self, cookie: &str) -> String {
        let answer = self.call(Some(cookie), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.assert_no_cookie();
        let seen = answer.seen().to_owned();
        if let Some(redis) = self.redis() {
            let stored = redis.cli(&["GET", &key(cookie)]);
            assert_eq!(if stored.is_empty() { "{}" } else { stored.as_str() }, seen);
        }
        seen
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let (status, _, text) = get(&self.proxy.admin_url("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in {text}"))
    }

    /// A request to the admin listener, with `Authorization: authorization` when given.
    pub async fn admin(&self, method: Method, path: &str, authorization: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(self.proxy.admin_url(path));
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        send(req.body(empty()).unwrap()).await
    }

    /// Sends a request that the app holds until [`AppEnv::release`], once the app has it.
    pub async fn held(&self, cookie: &str, headers: &[(&'static str, &'static str)]) -> JoinHandle<Answer> {
        let (url, cookie, headers) = (self.proxy.url("/app"), cookie.to_owned(), headers.to_vec());
        let task = tokio::spawn(async move {
            let mut req = Request::get(url).header("cookie", cookie).header("x-hold", "1");
            for (name, value) in headers {
                req = req.header(name, value);
            }
            send(req.body(empty()).unwrap()).await
        });
        guarded("the held request's read", self.gate.loaded.notified()).await;
        task
    }

    pub fn release(&self) {
        self.gate.release.notify_one();
    }
}

pub async fn send(req: Request<TestBody>) -> Answer {
    let resp = guarded("a request", client().request(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = guarded("its body", body.collect()).await.unwrap().to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// The Redis key of the session behind `cookie`.
pub fn key(cookie: &str) -> String {
    format!("_session:{}", session_id(cookie).unwrap())
}

/// Load on a set of sessions for the failover tests: each worker sends requests for its share
/// of them in turn, and every answer is recorded as a [`Sample`]. [`Load::start`] patches
/// each time with a fresh key (`x-patch-add`), and every patch that got a 2xx is in the ledger
/// (cookie, patched key); [`Load::reads`] only reads (the app answers with no change, so
/// nothing is written).
pub struct Load {
    ledger: Arc<Mutex<Vec<(String, String)>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// One answer of a [`Load`].
pub struct Sample {
    /// When the answer came.
    pub at: Instant,
    pub status: StatusCode,
    /// The session cookie the request carried.
    pub cookie: String,
    /// The session the app was sent (`x-seen`): empty when the request reached it without
    /// one, or did not reach it.
    pub seen: String,
}

impl Load {
    /// Patches, with a ledger of the acknowledged ones.
    pub fn start(env: &AppEnv, cookies: &[String], workers: usize) -> Load {
        Load::spawn(env, cookies, workers, true)
    }

    /// Reads only.
    pub fn reads(env: &AppEnv, cookies: &[String], workers: usize) -> Load {
        Load::spawn(env, cookies, workers, false)
    }

    fn spawn(env: &AppEnv, cookies: &[String], workers: usize, patch: bool) -> Load {
        let ledger = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|w| {
                let url = env.proxy.url("/app");
                let mine: Vec<String> = cookies.iter().skip(w).step_by(workers).cloned().collect();
                let (ledger, samples, stop) = (ledger.clone(), samples.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for cookie in &mine {
                            n += 1;
                            let field = format!("w{w}n{n}");
                            let mut req = http::Request::get(&url).header("cookie", cookie);
                            if patch {
                                req = req.header("x-patch-add", &field);
                            }
                            let answer = send(req.body(empty()).unwrap()).await;
                            samples.lock().unwrap().push(Sample {
                                at: Instant::now(),
                                status: answer.status,
                                cookie: cookie.clone(),
                                seen: answer.seen().to_owned(),
                            });
                            if patch && answer.status.is_success() {
                                ledger.lock().unwrap().push((cookie.clone(), field));
                            }
                        }
                    }
                })
            })
            .collect();
        Load { ledger, samples, stop, tasks }
    }

    /// Stops the workers; the ledger and every answer's (time, status, cookie).
    pub async fn finish(self) -> (Vec<(String, String)>, Vec<(Instant, StatusCode, String)>) {
        let (ledger, samples) = self.finish_samples().await;
        (ledger, samples.into_iter().map(|s| (s.at, s.status, s.cookie)).collect())
    }

    /// Stops the workers; the ledger and every answer.
    pub async fn finish_samples(self) -> (Vec<(String, String)>, Vec<Sample>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("load ends").unwrap();
        }
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        (ledger, samples)
    }
}
