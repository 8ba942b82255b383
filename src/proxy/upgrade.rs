//! `Upgrade` pass-through (WebSocket and others): once both the client and the upstream have
//! switched protocols, bytes are copied both ways until either side closes.

use std::sync::Mutex;

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A client connection after the switch.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

type Socket = Box<dyn ClientIo>;

/// Where a request that upgrades wants the client's socket, on an HTTP/1 connection that hands
/// it over itself once the `101` is written (see `server::conn`: hyper's own upgrade support
/// needs connections it shuts down).
#[derive(Default)]
pub(crate) struct Handover(Mutex<Option<oneshot::Sender<Socket>>>);

impl Handover {
    /// The request's side, before the request goes on: the socket arrives here when the
    /// connection gives it.
    pub(crate) fn expect(&self) -> oneshot::Receiver<Socket> {
        let (tx, rx) = oneshot::channel();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// The connection's side, once hyper is done with it: the sender of a request still
    /// waiting for the socket (one that answered `101`), if any.
    pub(crate) fn waiting(&self) -> Option<oneshot::Sender<Socket>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take().filter(|tx| !tx.is_closed())
    }
}

/// Joins the client's and the upstream's upgraded connections in a task of their own. Both
/// must be taken (`Handover::expect`, `hyper::upgrade::on`) before the 101 goes to the client.
pub(crate) fn tunnel(client: oneshot::Receiver<Socket>, upstream: OnUpgrade, request_id: HeaderValue) {
    tokio::spawn(async move {
        let client =
            async { client.await.map_err(|_| "the client connection ended before switching".to_owned()) };
        let upstream = async { upstream.await.map_err(|e| e.to_string()) };
        let (mut client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), error = %e, "upgrade failed");
                return;
            }
        };
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(
                request_id = request_id.to_str().unwrap_or("-"),
                up,
                down,
                "upgraded connection closed"
            ),
            Err(e) => {
                tracing::debug!(request_id = request_id.to_str().unwrap_or("-"), error = %e, "upgraded connection ended")
            }
        }
    });
}
