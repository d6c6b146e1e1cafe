//! Raw TCP routes: databases and caches behind the wall, reached through a public listener of
//! the gateway and a tunnel, admitted by client certificate and/or address.

pub mod config;
pub mod relay;
pub mod sni;
pub mod starttls;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug_span, warn};

use relay::TcpRoute;

/// A failed accept (out of file descriptors) is retried after this pause rather than in a
/// busy loop.
const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Accept on `listener` until shutdown (the port then closes); each connection runs as its own
/// task, tracked by `tasks` so that shutdown waits for it up to the drain deadline.
pub async fn serve(
    route: Arc<TcpRoute>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (tcp, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    warn!(route = %route.name, error = %e, "TCP accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let span = debug_span!("tcp", route = %route.name, client = %client);
        // Not cut at shutdown: a raw stream has no way to be told to finish, so an open
        // session carries on until it ends or the drain deadline closes the tunnels.
        tasks.spawn(route.clone().handle(tcp, client).instrument(span));
    }
}
