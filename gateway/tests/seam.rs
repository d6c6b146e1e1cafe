//! The tunnel server over the in-memory duplex transport, with tokio's paused clock: the
//! handshake, the control loop's idle deadline, drain and go-away behave exactly, with no
//! network and no waiting on real time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netwall_gateway::config::TunnelListenerConfig;
use netwall_gateway::metrics::Metrics;
use netwall_gateway::tunnel::server::{Binding, TunnelServer};
use netwall_gateway::tunnel::{Registry, credential_hash, parse_credential_hash};
use netwall_proto::{
    Codec, Frame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RejectCode, Secret,
};
use netwall_tunnel::handshake::{self, HelloError, Session};
use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::{Conn, Peer, duplex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CREDENTIAL: &str = "seam-credential";
const IDLE: Duration = Duration::from_secs(10);
const MUX: MuxParams = MuxParams {
    max_streams: 64,
    accept_backlog: 4,
};

struct Gateway {
    server: Arc<TunnelServer>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
}

/// A tunnel server with tunnel `app` (credentialed) and `sock` (socket-only, no credential).
fn gateway() -> Gateway {
    let metrics = Arc::new(Metrics::new());
    let hash = parse_credential_hash(&credential_hash(CREDENTIAL.as_bytes()));
    let registry = Arc::new(Registry::new(
        [("app".to_owned(), hash), ("sock".to_owned(), None)],
        metrics.clone(),
    ));
    let cfg: TunnelListenerConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\nself_signed = true\nidle_timeout = \"10s\"\nkeep_alive = \"2s\"\nhandshake_timeout = \"5s\"\n",
    )
    .expect("listener config");
    let server = Arc::new(TunnelServer::new(
        registry.clone(),
        metrics,
        Codec::default(),
        "seam-gw".into(),
        &cfg,
    ));
    Gateway {
        server,
        registry,
        shutdown: CancellationToken::new(),
    }
}

fn hello(tunnel: &str, credential: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        tunnel: tunnel.into(),
        credential: Secret(Bytes::copy_from_slice(credential.as_bytes())),
        connector_id: "seam-connector".into(),
        services: vec!["web".into()],
    }
}

impl Gateway {
    /// A connector connection served by the gateway under `binding`.
    async fn connect(&self, binding: Binding) -> (Conn, tokio::task::JoinHandle<()>) {
        let (client, server_side) = duplex::pair(MUX).await.expect("pair");
        let run = self.server.clone().run(
            None,
            Peer::Memory,
            binding,
            async move { Ok(server_side) },
            self.shutdown.clone(),
        );
        (client, tokio::spawn(run))
    }

    async fn session(&self, binding: Binding, h: Hello) -> Result<Session, HelloError> {
        let (client, _task) = self.connect(binding).await;
        handshake::say_hello(client, h, Codec::default()).await
    }

    fn live(&self, tunnel: &str) -> usize {
        self.registry.get(tunnel).map_or(0, |t| t.live_count())
    }
}

#[tokio::test(start_paused = true)]
async fn a_welcomed_connection_is_already_registered() {
    let gw = gateway();
    let s = gw
        .session(Binding::Any, hello("app", CREDENTIAL))
        .await
        .expect("welcome");
    assert_eq!(s.gateway_id, "seam-gw");
    // No wait: a connector that moves traffic here drains its old connection at once.
    assert_eq!(gw.live("app"), 1);
}

#[tokio::test(start_paused = true)]
async fn each_supported_version_is_welcomed_in_its_own_and_others_are_refused() {
    let gw = gateway();
    let speaking = |version| Hello {
        version,
        ..hello("app", CREDENTIAL)
    };
    for version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
        let s = gw
            .session(Binding::Any, speaking(version))
            .await
            .expect("welcome");
        assert_eq!(s.version, version);
    }
    for version in [0, PROTOCOL_VERSION + 1] {
        match gw.session(Binding::Any, speaking(version)).await {
            Err(HelloError::Rejected { code, .. }) => {
                assert_eq!(code, RejectCode::UnsupportedVersion, "version {version}")
            }
            Err(e) => panic!("version {version}: expected a reject, got {e}"),
            Ok(_) => panic!("version {version} was welcomed"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn wrong_credentials_and_unknown_tunnels_get_the_same_reject() {
    let gw = gateway();
    for h in [
        hello("app", "wrong"),
        hello("nope", CREDENTIAL),
        // A socket-only tunnel has no credential to present over the network.
        hello("sock", ""),
    ] {
        match gw.session(Binding::Any, h).await {
            Err(HelloError::Rejected { code, reason }) => {
                assert_eq!(code, RejectCode::BadCredential);
                assert_eq!(reason, "tunnel name or credential rejected");
            }
            Err(e) => panic!("expected a reject, got {e}"),
            Ok(_) => panic!("expected a reject, got a welcome"),
        }
    }
    assert_eq!(gw.live("app") + gw.live("sock"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_socket_binding_admits_only_its_own_tunnel() {
    let gw = gateway();
    let _sock = gw
        .session(Binding::Tunnel("sock".into()), hello("sock", ""))
        .await
        .expect("the socket's permissions are the authentication");
    assert!(matches!(
        gw.session(Binding::Tunnel("sock".into()), hello("app", CREDENTIAL))
            .await,
        Err(HelloError::Rejected { .. })
    ));
    // A credentialed tunnel on its own socket still checks the credential.
    assert!(matches!(
        gw.session(Binding::Tunnel("app".into()), hello("app", "wrong"))
            .await,
        Err(HelloError::Rejected { .. })
    ));
    let _app = gw
        .session(Binding::Tunnel("app".into()), hello("app", CREDENTIAL))
        .await
        .expect("right credential on the socket");
    assert_eq!((gw.live("sock"), gw.live("app")), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_silent_connector_is_dropped_after_exactly_the_idle_timeout() {
    let gw = gateway();
    let (client, task) = gw.connect(Binding::Any).await;
    let mut s = handshake::say_hello(client, hello("app", CREDENTIAL), Codec::default())
        .await
        .expect("welcome");
    // Pinging keeps it: 30 s of pings every 2 s, well past the 10 s idle timeout.
    let start = Instant::now();
    for i in 0..15u64 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.control_w.send(&Frame::Ping(i)).await.expect("ping");
        s.control_w.flush().await.expect("flush");
        assert!(matches!(s.control_r.next().await, Ok(Some(Frame::Pong(v))) if v == i));
    }
    assert_eq!(gw.live("app"), 1);
    // Then silence: the gateway gives up at exactly IDLE after the last frame.
    let last = Instant::now();
    task.await.expect("server task");
    let silent = last.elapsed();
    assert!(
        silent >= IDLE && silent < IDLE + Duration::from_millis(50),
        "closed after {silent:?} of silence"
    );
    assert!(start.elapsed() >= Duration::from_secs(40));
    assert_eq!(gw.live("app"), 0);
    assert!(s.conn.closed().await != netwall_tunnel::Closed::Locally);
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_the_last_lease_then_closes() {
    let gw = gateway();
    let (client, task) = gw.connect(Binding::Any).await;
    let mut s = handshake::say_hello(client, hello("app", CREDENTIAL), Codec::default())
        .await
        .expect("welcome");
    let tunnel = gw.registry.get("app").expect("tunnel");
    let lease = tunnel.pick().expect("a live connection");
    s.control_w.send(&Frame::Drain).await.expect("drain");
    s.control_w.flush().await.expect("flush");
    assert_eq!(
        s.control_r.next().await.expect("ack"),
        Some(Frame::DrainAck { streams_opened: 1 })
    );
    // Drained: no new request picks it, but the in-flight one keeps it open.
    assert!(tunnel.pick().is_none());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!task.is_finished(), "closed with a request in flight");
    assert!(s.conn.close_reason().is_none());
    drop(lease);
    task.await.expect("server task");
    s.conn.closed().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_tells_every_connector_to_go_away() {
    let gw = gateway();
    let mut s = gw
        .session(Binding::Any, hello("app", CREDENTIAL))
        .await
        .expect("welcome");
    gw.shutdown.cancel();
    match s.control_r.next().await {
        Ok(Some(Frame::GoAway { reason })) => assert_eq!(reason, "gateway shutting down"),
        other => panic!("expected a go-away, got {other:?}"),
    }
    // The connection stays up for requests in flight until the gateway closes it.
    assert_eq!(gw.live("app"), 1);
    gw.server
        .close_all(netwall_proto::wire::CLOSE_SHUTDOWN, b"bye");
    s.conn.closed().await;
}
