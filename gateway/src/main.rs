//! `netwall-gateway`: run the gateway, check a config offline, or mint a tunnel credential.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rand::RngCore;

#[derive(Parser)]
#[command(
    name = "netwall-gateway",
    version,
    about = "netwall gateway: the public edge of a reverse-tunnel network wall"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "NETWALL_GATEWAY_CONFIG",
        default_value = "gateway.toml"
    )]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "NETWALL_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration without binding anything; exit 0 when valid, 1 when not.
    Check,
    /// Generate a random tunnel credential; prints the credential (for the connector) and its
    /// SHA-256 (for `credential_sha256` in gateway.toml).
    Credential,
    /// Generate a WireGuard key pair: the private key goes in the file named by
    /// `wireguard_private_key_file` (mode 0600), the public key in each connector's
    /// `gateway_wireguard_public_key`.
    WgKeygen,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The status page's recent security events come from the same log lines.
    let recent = netwall_gateway::security_log::RecentEvents;
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish()
            .with(recent)
            .init(),
        LogFormat::Pretty => builder.compact().finish().with(recent).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => match netwall_gateway::check(&cli.config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} tunnels, {} routes)",
                    cli.config.display(),
                    cfg.tunnels.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                ExitCode::FAILURE
            }
        },
        Command::Credential => {
            let mut raw = [0u8; 32];
            rand::rng().fill_bytes(&mut raw);
            let credential = hex::encode(raw);
            println!("credential         = {credential}");
            println!(
                "credential_sha256  = \"{}\"",
                netwall_gateway::tunnel::credential_hash(credential.as_bytes())
            );
            ExitCode::SUCCESS
        }
        Command::WgKeygen => {
            let (private, public) = netwall_tunnel::wireguard::keys::generate();
            println!("private_key = {private}");
            println!("public_key  = {public}");
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(cli.log_format);
            match run(cli.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("netwall-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: PathBuf) -> anyhow::Result<()> {
    let loaded = netwall_gateway::config::GatewayConfig::load(&config)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    netwall_runtime::build(loaded.config.workers())
        .context("cannot start the runtime")?
        .block_on(serve(loaded))
}

async fn serve(loaded: netwall_gateway::config::Loaded) -> anyhow::Result<()> {
    // Watched before the start is announced, so a signal sent the moment the gateway says
    // it is up is handled rather than killing it.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let gateway = netwall_gateway::start(loaded)
        .await
        .context("cannot start")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            // The outcome is logged and counted by the reload itself.
            _ = hangup.recv() => { gateway.reload(); }
        }
    }
    gateway.shutdown().await;
    Ok(())
}
