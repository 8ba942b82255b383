//! The floor under session-proxy's speed: the least a reverse proxy built on the same crates
//! can do per request, measured beside it by `FLOOR=1 bench/run.sh` (scenarios 7 and 8) and
//! `bench/profile.sh 7 8`.
//!
//! The same architecture as session-proxy (one current-thread tokio runtime per core, accepted
//! connections dealt round-robin, hyper's HTTP/1 server, hyper's `client::conn` with a pool
//! per worker and a task per upstream connection), and nothing else: no routing, no header
//! rules, no request ids, no timeouts, no metrics, no logging. With `--redis URL` each request
//! also waits for one fred `GET` (one client per worker, as session-proxy's pool), to show
//! what a store read costs on its own; with `--keys N` too, the GETs cycle over the keys
//! `bare-proxy:session:0` to `N-1` (spread over a Redis Cluster's masters, as sessions are:
//! `bench/ab.py bare+get:PATH bare+get:PATH --cluster-b`).
//!
//! Not a product: it forwards whatever it is sent to one upstream and trusts it completely.
//!
//! ```text
//! cargo run --release --example bare_proxy -- --listen 127.0.0.1:8081 \
//!     --upstream 127.0.0.1:8080 [--redis redis://127.0.0.1:6380 [--keys 256]]
//! ```

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::{Config, ConnectionConfig, TcpConfig};
use fred::types::Key;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

thread_local! {
    /// This worker's idle upstream connections.
    static POOL: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
    /// This worker's next key, with `--keys`.
    static NEXT_KEY: Cell<usize> = const { Cell::new(0) };
}

#[derive(Clone)]
struct Worker {
    upstream: SocketAddr,
    redis: Option<Client>,
    /// `--keys`: the GETs cycle over this many keys; 0 reads `bare-proxy:session`.
    keys: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream, mut redis, mut keys) = (None, None, None, 0);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>()?),
            "--upstream" => upstream = Some(value.parse::<SocketAddr>()?),
            "--redis" => redis = Some(value),
            "--keys" => keys = value.parse::<usize>()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let (listen, upstream) =
        (listen.ok_or("--listen is required")?, upstream.ok_or("--upstream is required")?);

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut workers = Vec::new();
    for _ in 0..cores {
        let (tx, rx) = std::sync::mpsc::channel();
        let redis = redis.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let redis = match redis {
                    Some(url) => {
                        // No Nagle, as session-proxy's store: with it, a command sent while
                        // another is unanswered would wait for that answer.
                        let connection = ConnectionConfig {
                            tcp: TcpConfig { nodelay: Some(true), ..TcpConfig::default() },
                            ..ConnectionConfig::default()
                        };
                        let config = Config::from_url(&url).expect("redis url");
                        let client = Client::new(config, None, Some(connection), None);
                        client.init().await.expect("redis connect");
                        Some(client)
                    }
                    None => None,
                };
                tx.send((tokio::runtime::Handle::current(), Worker { upstream, redis, keys })).expect("main");
                std::future::pending::<()>().await
            })
        });
        workers.push(rx.recv()?);
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        // Silent: bench/run.sh reports any line a proxy logs.
        let listener = TcpListener::bind(listen).await?;
        // SIGTERM ends the process normally, so that a build instrumented for PGO
        // (scripts/build-pgo.sh) writes its profile.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        for next in (0..workers.len()).cycle() {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = terminate.recv() => return Ok(()),
            };
            let stream = stream.into_std()?;
            let (handle, worker) = workers[next].clone();
            handle.spawn(async move {
                if let Ok(stream) = TcpStream::from_std(stream) {
                    serve(stream, worker).await
                }
            });
        }
        Ok(())
    })
}

async fn serve(stream: TcpStream, worker: Worker) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let worker = worker.clone();
        async move { Ok::<_, Infallible>(forward(req, &worker).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

async fn forward(req: Request<Incoming>, worker: &Worker) -> Response<Pooled> {
    if let Some(redis) = &worker.redis {
        let key = match worker.keys {
            0 => Key::from_static_str("bare-proxy:session"),
            keys => format!("bare-proxy:session:{}", NEXT_KEY.replace((NEXT_KEY.get() + 1) % keys)).into(),
        };
        if redis.get::<Option<Bytes>, _>(key).await.is_err() {
            return error_response();
        }
    }
    let mut sender = match POOL.with(|p| checkout(&mut p.borrow_mut())) {
        Some(sender) => sender,
        None => match connect(worker.upstream).await {
            Some(sender) => sender,
            None => return error_response(),
        },
    };
    match sender.send_request(req).await {
        Ok(resp) => resp.map(|body| {
            let mut pooled = Pooled { body: Some(body), sender: Some(sender) };
            pooled.release_if_done();
            pooled
        }),
        Err(_) => error_response(),
    }
}

/// The most recently used idle connection that can take a request now.
fn checkout(pool: &mut Vec<SendRequest<Incoming>>) -> Option<SendRequest<Incoming>> {
    pool.retain(|s| !s.is_closed());
    let ready = pool.iter().rposition(SendRequest::is_ready)?;
    Some(pool.remove(ready))
}

async fn connect(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn error_response() -> Response<Pooled> {
    let mut resp = Response::new(Pooled { body: None, sender: None });
    *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
    resp
}

/// The upstream's body; read to its end, it puts its connection back in the pool.
struct Pooled {
    body: Option<Incoming>,
    sender: Option<SendRequest<Incoming>>,
}

impl Pooled {
    fn release_if_done(&mut self) {
        if self.body.as_ref().is_none_or(Body::is_end_stream) {
            if let Some(sender) = self.sender.take() {
                POOL.with(|p| p.borrow_mut().push(sender));
            }
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => self.sender = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}
