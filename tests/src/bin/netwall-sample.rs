//! `netwall-sample`: the small HTTP service the quickstart and the end-to-end tests put behind
//! a connector.
//!
//! Routes: `/` (a greeting naming the client as the gateway reported it), `/echo` (the request
//! body back), `/bytes?n=N` (N bytes, streamed), `/upload` (counts the body), `/slow?ms=N`,
//! `/headers` (request headers as text), and any request with `Upgrade` is switched to a raw
//! byte echo.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "netwall-sample",
    about = "sample HTTP service for the netwall demo and tests"
)]
struct Cli {
    /// Address to listen on; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Name shown in responses.
    #[arg(long, default_value = "sample")]
    name: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("netwall-sample listening on {}", listener.local_addr()?);
    netwall_tests::sample::serve(listener, cli.name).await;
    Ok(())
}
