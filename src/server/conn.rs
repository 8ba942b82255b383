//! One client connection: the TLS handshake, which protocol it speaks (ALPN, or the HTTP/2
//! preface for prior knowledge on plain TCP), HTTP/2 with hyper, HTTP/1.1 through `parking`,
//! and graceful shutdown. Every request goes to the worker's [`Proxy`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::limits::Limits;
use super::parking::{self, shutting_down, Handler, Http1, Rewind, Socket};
use crate::admission::Admitted;
use crate::proxy::{headers, ConnInfo, Failure, Proxy, ProxyBody};

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection of one worker shares: the proxy, the protocol settings, the TLS
/// acceptor and the limits.
pub(super) struct Serving {
    pub proxy: Arc<Proxy>,
    pub http1: Http1,
    pub http2: http2::Builder<TokioExecutor>,
    pub http2_timeouts: super::http2::Timeouts,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: Limits,
}

impl Serving {
    pub fn new(
        proxy: Arc<Proxy>,
        draining: Arc<std::sync::atomic::AtomicBool>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: Limits,
        client_send_timeout: Duration,
    ) -> Serving {
        let http1 = Http1::new(
            limits.max_header_bytes.max(8192),
            limits.header_read_timeout,
            client_send_timeout,
            proxy.metrics.clone(),
            draining,
        );
        let http2 = super::http2::builder(&limits);
        let http2_timeouts =
            super::http2::Timeouts { idle: limits.header_read_timeout, client_send: client_send_timeout };
        Serving { proxy, http1, http2, http2_timeouts, tls, limits }
    }
}

/// One accepted client connection.
pub(super) struct Connection {
    pub serving: Arc<Serving>,
    pub shutdown: watch::Receiver<bool>,
    pub peer: SocketAddr,
}

/// A client's socket, with its place under `server.max_connections` (`admission`).
pub(super) type ClientSocket = Admitted<TcpStream>;

impl Connection {
    pub async fn serve(self, stream: ClientSocket) {
        match self.serving.tls.clone() {
            None => self.serve_plain(stream).await,
            // Boxed so the plain-HTTP task is not sized for the TLS handshake's state.
            Some(acceptor) => {
                let tls = Box::pin(self.serve_tls(acceptor, stream));
                tls.await
            }
        }
    }

    async fn serve_plain(mut self, mut stream: ClientSocket) {
        // Nothing of hyper's is allocated until the client has spoken and said which protocol.
        // Every stage is boxed, each in a statement of its own, so that the task itself stays
        // a few hundred bytes and a parked connection holds little more.
        let limit = self.serving.limits.header_read_timeout;
        let head_deadline = Instant::now() + limit;
        let sniff = Box::pin(sniff(&mut stream, limit, &mut self.shutdown));
        match sniff.await {
            Sniffed::Http2(prefix) => {
                let h2 = Box::pin(self.serve_http2(Rewind::new(stream, prefix)));
                h2.await
            }
            Sniffed::Http1(prefix) => {
                let h1 = Box::pin(self.serve_http1(stream, prefix, head_deadline));
                h1.await
            }
            Sniffed::Closed | Sniffed::ShuttingDown => {}
            Sniffed::Failed(e) => tracing::debug!(peer = %self.peer, error = %e, "client connection failed"),
            Sniffed::TimedOut => {
                tracing::debug!(peer = %self.peer, "client sent no request within the header read timeout")
            }
        }
    }

    async fn serve_tls(self, acceptor: tokio_rustls::TlsAcceptor, stream: ClientSocket) {
        let tls =
            match tokio::time::timeout(self.serving.limits.tls_handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
            };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_http2(tls).await
        } else {
            let head_deadline = Instant::now() + self.serving.limits.header_read_timeout;
            self.serve_http1(tls, Bytes::new(), head_deadline).await
        }
    }

    /// What the proxy is told of this connection.
    fn info(&self) -> ConnInfo {
        ConnInfo { client_ip: headers::client_ip(self.peer.ip()) }
    }

    async fn serve_http2<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = self.info();
        let serving = &self.serving;
        super::http2::serve(
            &serving.http2,
            &serving.http2_timeouts,
            io,
            serving.proxy.clone(),
            info,
            &mut self.shutdown,
            self.peer,
        )
        .await
    }

    /// HTTP/1.1, parked whenever it is idle. `head_deadline`: when the first request's head
    /// must be in.
    async fn serve_http1<S: Socket>(mut self, socket: S, unread: Bytes, head_deadline: Instant) {
        let handler = ProxyHandler { proxy: self.serving.proxy.clone(), info: self.info() };
        let serving = &self.serving;
        parking::serve(&serving.http1, socket, unread, head_deadline, handler, &mut self.shutdown, self.peer)
            .await
    }
}

/// The proxy as a parked connection's handler.
#[derive(Clone)]
struct ProxyHandler {
    proxy: Arc<Proxy>,
    info: ConnInfo,
}

impl Handler for ProxyHandler {
    type Body = ProxyBody;

    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<ProxyBody>> + Send + '_ {
        self.proxy.handle(req, &self.info)
    }

    fn refuse_ambiguous(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.proxy.refuse(req, Failure::BadFraming("both Content-Length and Transfer-Encoding"))
    }
}

/// What the first bytes of a plain connection said.
#[derive(Debug)]
enum Sniffed {
    /// The HTTP/2 preface (prior knowledge), and the bytes read.
    Http2(Bytes),
    /// Anything else, and the bytes read (enough to tell, at least one).
    Http1(Bytes),
    /// Closed before a byte.
    Closed,
    Failed(io::Error),
    /// Nothing to tell by within the header read timeout.
    TimedOut,
    ShuttingDown,
}

/// Reads until the bytes read are, or cannot be, the HTTP/2 preface, within `limit` and unless
/// the server shuts down first.
async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Sniffed {
    tokio::select! {
        r = tokio::time::timeout(limit, read_preface(stream)) => match r {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(e)) => Sniffed::Failed(e),
            Err(_) => Sniffed::TimedOut,
        },
        () = shutting_down(shutdown) => Sniffed::ShuttingDown,
    }
}

async fn read_preface<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Sniffed> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() { Sniffed::Closed } else { Sniffed::Http1(buf.freeze()) });
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Sniffed::Http1(buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok(Sniffed::Http2(buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn sniff_tells_http2_prior_knowledge_from_http1() {
        for (sent, h2) in [(H2_PREFACE, true), (&b"GET / HTTP/1.1\r\n\r\n"[..], false), (&b"P"[..], false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                // One byte at a time: the sniffer must wait for enough bytes to decide.
                for b in sent {
                    c.write_all(&[*b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
                c.shutdown().await.unwrap();
                c
            });
            let (mut s, _) = listener.accept().await.unwrap();
            let read = match read_preface(&mut s).await.unwrap() {
                Sniffed::Http2(read) if h2 => read,
                Sniffed::Http1(read) if !h2 => read,
                other => panic!("{sent:?} sniffed as {other:?}"),
            };
            assert!(sent.starts_with(&read) && !read.is_empty(), "{sent:?} read {read:?}");
            drop(client.await.unwrap());
        }
        // A client that closes without a byte.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        drop(client);
        assert!(matches!(read_preface(&mut s).await.unwrap(), Sniffed::Closed));
    }
}
