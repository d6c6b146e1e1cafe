//! WebSocket fan-out: a service publishes once, through its connector, and every gateway
//! delivers to its own subscribed WebSocket clients.
//!
//! The service sits behind the wall with no inbound (and ideally no outbound) network, so it
//! publishes on its connector's local endpoint; the connector sends a `Publish` frame on a
//! tunnel's control stream; the gateway that receives it hands it to the shared-state store
//! ([`crate::state::Store::fanout`]), which brings it to every gateway (Redis pub/sub, or this
//! process alone with the memory driver); each gateway's [`Hub`] puts it in the queue of each
//! subscribed session.
//!
//! Who receives what is the gateway's decision, never the client's: a session on a route
//! with `[route.websocket] push = true` is subscribed, by the route and the verified token,
//! to `route:NAME` (everyone on the route), `user:SUB` (its authenticated user) and
//! `connection:ID` (itself; the service learns the id from the `x-netwall-connection`
//! header of the WebSocket's opening request). A message only reaches sessions on routes
//! served by the tunnel that published it: one tenant's service cannot push to another's
//! clients.
//!
//! Order per channel is kept: one control stream, one publishing task per gateway, one Redis
//! connection publishing, one queue per session. A session's queue is bounded; a client that
//! does not keep up is closed with [`crate::ws::CLOSE_TOO_SLOW`] and never delays the others
//! (delivery never waits on a queue).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use netwall_proto::valid_channel;

use crate::metrics::{Metrics, PushLabel};

/// Published messages a gateway queues towards its store before the connector's control
/// stream waits (backpressure to the publishing service, never a drop).
pub const PUBLISH_QUEUE: usize = 1024;

/// A message on its way to every gateway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pushed {
    /// The tunnel whose service published it: only its routes' sessions receive it.
    pub tunnel: String,
    /// `route:NAME`, `user:SUB` or `connection:ID`.
    pub channel: String,
    /// The text.
    pub message: String,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    overflowed: Arc<AtomicBool>,
}

/// This gateway's subscribed sessions, by tunnel and channel.
#[derive(Default)]
pub struct Hub {
    subs: RwLock<HashMap<(String, String), Vec<Subscriber>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// A session's subscription; unsubscribes on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    keys: Vec<(String, String)>,
    /// Messages for the session, in order.
    pub rx: mpsc::Receiver<Bytes>,
    overflowed: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether a message was lost because the queue was full: the session must end.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut subs) = self.hub.subs.write() {
            for key in &self.keys {
                if let Some(list) = subs.get_mut(key) {
                    list.retain(|s| s.id != self.id);
                    if list.is_empty() {
                        subs.remove(key);
                    }
                }
            }
        }
    }
}

impl Hub {
    /// A number for a new session, unique in this process.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribe a session (numbered `id`) of a route served by `tunnel` to `channels`,
    /// with a queue of `queue` messages.
    pub fn subscribe(
        self: &Arc<Self>,
        id: u64,
        tunnel: &str,
        channels: Vec<String>,
        queue: usize,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let keys: Vec<(String, String)> = channels
            .into_iter()
            .map(|c| (tunnel.to_owned(), c))
            .collect();
        if let Ok(mut subs) = self.subs.write() {
            for key in &keys {
                subs.entry(key.clone()).or_default().push(Subscriber {
                    id,
                    tx: tx.clone(),
                    overflowed: overflowed.clone(),
                });
            }
        }
        Subscription {
            hub: self.clone(),
            id,
            keys,
            rx,
            overflowed,
        }
    }

    /// Put `pushed` in the queue of every session subscribed to its tunnel and channel;
    /// returns how many received it. Never waits: a full queue marks its session as too slow.
    pub fn deliver(&self, pushed: Pushed, metrics: &Metrics) -> usize {
        let Ok(subs) = self.subs.read() else {
            return 0;
        };
        let key = (pushed.tunnel, pushed.channel);
        let Some(list) = subs.get(&key) else {
            return 0;
        };
        let message = Bytes::from(pushed.message);
        let mut delivered = 0;
        for s in list {
            match s.tx.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !s.overflowed.swap(true, Ordering::Relaxed) {
                        metrics
                            .pushes
                            .get_or_create(&PushLabel {
                                outcome: "client_too_slow",
                            })
                            .inc();
                        warn!(target: "netwall::security", event = "push_overflow", channel = %key.1, "a WebSocket client does not keep up with pushed messages; closing it");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        metrics
            .pushes
            .get_or_create(&PushLabel {
                outcome: "delivered",
            })
            .inc_by(delivered as u64);
        delivered
    }
}

/// Hands messages a connector published to the store, in order, from one task.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Pushed>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Start the publishing task over `store`.
    pub fn start(store: Arc<dyn crate::state::Store>, metrics: Arc<Metrics>) -> Publisher {
        let (tx, mut rx) = mpsc::channel::<Pushed>(PUBLISH_QUEUE);
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let outcome = match store.fanout(p).await {
                    Ok(()) => "published",
                    Err(_) => "store_unavailable",
                };
                metrics.pushes.get_or_create(&PushLabel { outcome }).inc();
            }
        });
        Publisher { tx }
    }

    /// Publish `message` on `channel` for the sessions of `tunnel`; waits while the queue is
    /// full. A channel a service may not publish on is counted, logged and dropped.
    pub async fn publish(&self, tunnel: &str, channel: String, message: Bytes, metrics: &Metrics) {
        // The tunnel's decoder admits only UTF-8 here; this is the conversion, not a check.
        let Ok(message) = String::from_utf8(Vec::from(message)) else {
            return;
        };
        if !valid_channel(&channel) {
            metrics
                .pushes
                .get_or_create(&PushLabel {
                    outcome: "invalid_channel",
                })
                .inc();
            warn!(target: "netwall::security", event = "push_refused", tunnel, reason = "invalid channel", "a connector published on a channel that does not exist");
            return;
        }
        // Fails only once the publishing task is gone, with the gateway.
        let _ = self
            .tx
            .send(Pushed {
                tunnel: tunnel.to_owned(),
                channel,
                message,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(channel: &str, message: &str) -> Pushed {
        Pushed {
            tunnel: "app".into(),
            channel: channel.into(),
            message: message.into(),
        }
    }

    #[tokio::test]
    async fn delivery_is_by_tunnel_and_channel_in_order_and_never_waits() {
        let hub = Arc::new(Hub::default());
        let metrics = Metrics::new();
        let mut a = hub.subscribe(1, "app", vec!["route:r".into(), "user:alice".into()], 2);
        let mut other_tunnel = hub.subscribe(2, "other", vec!["route:r".into()], 2);
        assert_eq!(hub.deliver(pushed("route:r", "1"), &metrics), 1);
        assert_eq!(hub.deliver(pushed("user:alice", "2"), &metrics), 1);
        assert_eq!(a.rx.recv().await.as_deref(), Some(&b"1"[..]));
        assert_eq!(a.rx.recv().await.as_deref(), Some(&b"2"[..]));
        assert!(
            other_tunnel.rx.try_recv().is_err(),
            "another tunnel's route"
        );
        // A full queue: the third message is not queued and the session is marked.
        for i in 0..3 {
            hub.deliver(pushed("route:r", &i.to_string()), &metrics);
        }
        assert!(a.overflowed());
        drop(a);
        assert_eq!(hub.deliver(pushed("route:r", "after"), &metrics), 0);
        // Only the other tunnel's subscription is left.
        assert_eq!(hub.subs.read().expect("lock").len(), 1);
    }
}
