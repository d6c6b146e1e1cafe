//! Several gateways sharing one `redis-server`, the sample service, and one connector
//! attached to every gateway (with its publish endpoint on): the many-gateway deployment, in
//! this process, for the shared-state tests and the benchmark.

use std::net::SocketAddr;

use crate::harness::{HttpsClient, Pki, start_connector, start_gateway, start_sample, wait_tunnel};
use crate::redis::Redis;

/// The running cluster.
pub struct Cluster {
    /// Certificates and credential.
    pub pki: Pki,
    /// The shared Redis.
    pub redis: Redis,
    /// The gateways, each with its own ports and tunnel socket.
    pub gateways: Vec<netwall_gateway::RunningGateway>,
    /// Attached to every gateway.
    pub connector: netwall_connector::RunningConnector,
    routes: String,
}

/// `[state]` pointing at `redis`.
pub fn redis_state(redis: &Redis) -> String {
    format!("[state]\ndriver = \"redis\"\nurl = \"{}\"\n", redis.url())
}

/// Gateway `i`'s configuration with `routes` and the shared state, its tunnel listener on
/// `tunnel`; up to 5,000 client connections from one address (the test clients share one).
pub fn gateway_toml(pki: &Pki, redis: &Redis, routes: &str, i: usize, tunnel: &str) -> String {
    pki.gateway_toml_at(tunnel, &format!("{routes}\n{}", redis_state(redis)))
        .replace("app.sock", &format!("app-{i}.sock"))
        .replace("[https]\n", "[https]\nmax_connections_per_ip = 5000\n")
}

impl Cluster {
    /// Redis, `n` gateways serving `routes`, the sample service named `name`, one connector.
    pub async fn start(name: &str, n: usize, pki: Pki, routes: String) -> Cluster {
        let redis = Redis::start(&[]).await;
        let sample = start_sample(name).await;
        let mut gateways = Vec::new();
        for i in 0..n {
            gateways
                .push(start_gateway(&gateway_toml(&pki, &redis, &routes, i, "127.0.0.1:0")).await);
        }
        let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.tunnel_addr).collect();
        let connector = start_connector(
            &pki.connector_toml(
                &addrs,
                &format!("web = \"http://{sample}\""),
                "publish_listen = \"127.0.0.1:0\"",
            ),
            &pki.credential,
        );
        for g in &gateways {
            wait_tunnel(g, 1).await;
        }
        Cluster {
            pki,
            redis,
            gateways,
            connector,
            routes,
        }
    }

    /// Gateway `i`'s configuration, its tunnel listener on `tunnel`.
    pub fn gateway_toml(&self, i: usize, tunnel: &str) -> String {
        gateway_toml(&self.pki, &self.redis, &self.routes, i, tunnel)
    }

    /// An HTTP/1.1 client of gateway `i`.
    pub fn client(&self, i: usize) -> HttpsClient {
        HttpsClient::new(self.gateways[i].https_addr, &self.pki.ca_der, false)
    }

    /// Gateway `i`'s admin address.
    pub fn admin(&self, i: usize) -> SocketAddr {
        self.gateways[i].admin_addr.expect("admin")
    }
}
