//! Keep-alive HTTP/1.1 connections to one local service, each driven by the request using it.
//!
//! hyper's pooled client runs every connection in a task of its own: a request hands its head
//! to that task, which writes it, reads the answer and hands the response and each body chunk
//! back, so a request costs two task switches and a pool look-up (a lock, a map by authority,
//! a waiter queue) on top of its I/O. Here a request takes an idle connection off a short
//! stack, drives it itself while it waits for the response and while it reads the body, and
//! puts it back once the exchange is over and hyper says the connection can carry another.
//!
//! A connection waiting in the stack is polled by nobody, so one the service closed meanwhile
//! is noticed when it is taken: it is polled once first (the closing is already known to the
//! runtime, so this costs no system call) and dropped if it ended. A request that still meets
//! a closed connection before anything of it was written is tried once on a new one.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::local::LocalConnector;

/// How long a connection may wait in the stack before it is closed rather than reused: most
/// services close idle keep-alive connections within a minute or two (nginx after 75 s), and
/// hyper's pooled client waits 90 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection to the service could be made.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The exchange failed on an established connection.
    #[error("{0}")]
    Request(#[from] hyper::Error),
}

/// One connection: the handle requests are sent through, and the future that does its I/O.
pub struct Conn<B>
where
    B: hyper::body::Body + 'static,
{
    sender: http1::SendRequest<B>,
    /// hyper's connection with upgrades (a type it does not name, hence boxed once per
    /// connection).
    driver: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The driver finished (the connection closed, or was upgraded): never poll it again.
    done: bool,
}

/// Idle connections to one service.
pub struct Pool<B>
where
    B: hyper::body::Body + 'static,
{
    connector: LocalConnector,
    idle: Mutex<Vec<(Conn<B>, Instant)>>,
    max_idle: usize,
}

impl<B> Pool<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool dialing with `connector`, keeping at most `max_idle` connections.
    pub fn new(connector: LocalConnector, max_idle: usize) -> Self {
        Pool {
            connector,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Send `req` on an idle connection, or a new one; the response, with the connection
    /// that carries its body (hand it to [`Pool::finish`] once the body is read).
    pub async fn send(&self, req: Request<B>) -> Result<(Response<Incoming>, Conn<B>), PoolError> {
        let req = match self.take() {
            Some(mut conn) => {
                let sent = conn.sender.try_send_request(req);
                match conn.drive(sent).await {
                    Ok(resp) => return Ok((resp, conn)),
                    Err(mut e) => match e.take_message() {
                        // The connection was gone before any of the request was written: a
                        // new one is as good.
                        Some(req) => req,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
            None => req,
        };
        let mut conn = self.connect().await?;
        let sent = conn.sender.send_request(req);
        let resp = conn.drive(sent).await?;
        Ok((resp, conn))
    }

    /// Put `conn` back once its exchange is over, if it can carry another request.
    pub fn finish(&self, mut conn: Conn<B>) {
        // One more turn lets hyper finish the exchange's bookkeeping (and see a `close`).
        conn.poll_now();
        if conn.done || !conn.sender.is_ready() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        expire(&mut idle, now);
        if idle.len() < self.max_idle {
            idle.push((conn, now));
        }
    }

    /// The most recently used idle connection that is still open, if any.
    fn take(&self) -> Option<Conn<B>> {
        loop {
            let mut conn = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (conn, since) = idle.pop()?;
                if since.elapsed() >= IDLE_TIMEOUT {
                    // The newest waited too long, so every other one did too.
                    idle.clear();
                    return None;
                }
                conn
            };
            // A close the service sent while the connection waited is seen here.
            conn.poll_now();
            if !conn.done && conn.sender.is_ready() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn<B>, PoolError> {
        let io = self.connector.connect().await.map_err(PoolError::Connect)?;
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| PoolError::Connect(io::Error::other(e)))?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver.with_upgrades()),
            done: false,
        })
    }
}

/// Drop connections that by `now` waited longer than [`IDLE_TIMEOUT`] (the oldest are
/// first). One clock read serves the whole pass and the connection put back after it.
fn expire<T>(idle: &mut Vec<(T, Instant)>, now: Instant) {
    let fresh = idle
        .iter()
        .position(|(_, since)| now.saturating_duration_since(*since) < IDLE_TIMEOUT)
        .unwrap_or(idle.len());
    idle.drain(..fresh);
}

impl<B> Conn<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Run `f` (a response, a body being read) while this connection does its I/O.
    pub async fn drive<F: Future>(&mut self, f: F) -> F::Output {
        let mut f = pin!(f);
        poll_fn(|cx| {
            self.poll_driver(cx);
            f.as_mut().poll(cx)
        })
        .await
    }

    /// Drive the connection until it ends: after a `101`, that is when hyper hands the
    /// connection over to the upgrade.
    pub async fn run_to_end(mut self) {
        poll_fn(|cx| {
            self.poll_driver(cx);
            if self.done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Let the connection do what it can without waiting, for a caller that will not be
    /// woken by it (the connection is about to wait in the stack, or was just taken from it).
    fn poll_now(&mut self) {
        self.poll_driver(&mut Context::from_waker(Waker::noop()));
    }

    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if self.done {
            return;
        }
        if let Poll::Ready(r) = self.driver.as_mut().poll(cx) {
            self.done = true;
            if let Err(e) = r {
                debug!(error = %e, "service connection ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_drops_exactly_the_connections_idle_too_long() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut idle = vec![(1, at(0)), (2, at(10)), (3, at(50))];
        expire(&mut idle, at(89));
        assert_eq!(idle.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [1, 2, 3]);
        expire(&mut idle, at(99));
        assert_eq!(idle.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [2, 3]);
        expire(&mut idle, at(139));
        assert_eq!(idle.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [3]);
        expire(&mut idle, at(500));
        assert!(idle.is_empty());
        // A clock read before the entries (another thread put one back meanwhile) keeps them.
        let mut idle = vec![(4, at(10))];
        expire(&mut idle, at(0));
        assert_eq!(idle.len(), 1);
    }
}
