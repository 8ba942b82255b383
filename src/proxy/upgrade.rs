//! `Upgrade` pass-through (WebSocket and others): once both the client and the upstream have
//! switched protocols, bytes are copied both ways until either side closes.

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the upstream's upgraded connections in a task of their own. Both
/// handles must be taken (`hyper::upgrade::on`) before the 101 goes to the client.
pub(crate) fn tunnel(client: OnUpgrade, upstream: OnUpgrade, request_id: HeaderValue) {
    tokio::spawn(async move {
        let rid = request_id.to_str().unwrap_or("-");
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(request_id = rid, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(request_id = rid, up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(request_id = rid, error = %e, "upgraded connection ended"),
        }
    });
}
