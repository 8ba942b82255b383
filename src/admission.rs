//! How many connections a listener holds at once: a [`Gate`] hands each accepted connection a
//! [`Ticket`], and at the cap the listener stops accepting until a connection closes (the
//! kernel's backlog holds the clients that arrive meanwhile, and refuses them once it is full).
//!
//! The ticket travels with the connection's socket ([`Admitted`]), so a connection counts until
//! its socket closes: after an upgrade too, while the WebSocket tunnel holds it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Counter, Gauge, Metrics};

/// One listener's cap on open connections.
pub(crate) struct Gate {
    tickets: Arc<Semaphore>,
    cap: usize,
    /// `public` or `admin`: the label of the log lines and the counter.
    listener: &'static str,
    /// Episodes at the cap (not refused clients: none is refused, they wait in the backlog).
    reached: Counter,
    /// The open connections gauge the tickets move, if this listener's are counted.
    open: Option<Gauge>,
    /// At the cap since the last time a ticket was free without waiting: an episode, logged
    /// and counted once however many connections close and open meanwhile.
    at_cap: AtomicBool,
}

impl Gate {
    /// A gate for `cap` connections at once (at least one). `open` is moved by every ticket.
    pub(crate) fn new(cap: usize, listener: &'static str, metrics: &Metrics, open: Option<Gauge>) -> Gate {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        Gate {
            tickets: Arc::new(Semaphore::new(cap)),
            cap,
            listener,
            reached: metrics.connection_cap_reached(listener),
            open,
            at_cap: AtomicBool::new(false),
        }
    }

    /// A ticket for the next connection. At the cap, waits until a connection closes. An
    /// episode at the cap is logged and counted once, when it starts, and logged again when a
    /// ticket is free without waiting.
    pub(crate) async fn admit(&self) -> Ticket {
        let permit = match self.tickets.clone().try_acquire_owned() {
            Ok(permit) => {
                if self.at_cap.swap(false, Ordering::Relaxed) {
                    tracing::info!(listener = self.listener, "below the connection cap again");
                }
                permit
            }
            Err(_) => {
                if !self.at_cap.swap(true, Ordering::Relaxed) {
                    self.reached.inc();
                    tracing::warn!(
                        listener = self.listener,
                        max_connections = self.cap,
                        "connection cap reached: accepting paused until a connection closes"
                    );
                }
                match self.tickets.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        Ticket { _permit: permit, open: self.open.clone() }
    }
}

/// A place under a listener's cap, taken before a connection is accepted and given back when
/// dropped.
pub(crate) struct Ticket {
    _permit: OwnedSemaphorePermit,
    /// Moved once the ticket belongs to a socket ([`Admitted`]).
    open: Option<Gauge>,
}

/// A socket with its connection's ticket: whoever holds the socket holds the place. The open
/// connections gauge counts these.
pub(crate) struct Admitted<S> {
    socket: S,
    ticket: Ticket,
}

impl<S> Admitted<S> {
    pub(crate) fn new(socket: S, ticket: Ticket) -> Admitted<S> {
        if let Some(open) = &ticket.open {
            open.inc();
        }
        Admitted { socket, ticket }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.socket
    }
}

impl<S> Drop for Admitted<S> {
    fn drop(&mut self) {
        if let Some(open) = &self.ticket.open {
            open.dec();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn at_the_cap_admit_waits_for_a_ticket_and_counts_the_episode_once() {
        let metrics = Metrics::new();
        let open = Gauge::default();
        let gate = Gate::new(2, "public", &metrics, Some(open.clone()));
        let a = gate.admit().await;
        let b = Admitted::new((), gate.admit().await);
        assert_eq!(open.get(), 1, "a ticket not yet given to a socket is not an open connection");
        let mut third = Box::pin(gate.admit());
        assert!(futures_util::FutureExt::now_or_never(&mut third).is_none(), "at the cap");
        assert!(futures_util::FutureExt::now_or_never(&mut third).is_none(), "still at the cap");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("admitted once a ticket is back");
        // At the cap again at once: the same episode.
        let mut fourth = Box::pin(gate.admit());
        assert!(futures_util::FutureExt::now_or_never(&mut fourth).is_none());
        drop(b);
        assert_eq!(open.get(), 0);
        let d = tokio::time::timeout(Duration::from_secs(10), fourth).await.expect("admitted");
        let text = metrics.encode();
        assert!(
            text.contains("session_proxy_connection_cap_reached_total{listener=\"public\"} 1\n"),
            "{text}"
        );
        // A free ticket ends the episode; the next one counts again.
        drop(c);
        let e = gate.admit().await;
        assert!(futures_util::FutureExt::now_or_never(Box::pin(gate.admit())).is_none());
        let text = metrics.encode();
        assert!(
            text.contains("session_proxy_connection_cap_reached_total{listener=\"public\"} 2\n"),
            "{text}"
        );
        drop((d, e));
    }
}
