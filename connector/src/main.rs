//! `netwall-connector`: the sidecar that dials out to netwall gateways.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(
    name = "netwall-connector",
    version,
    about = "netwall connector: dials out to gateways and replays requests to local services"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "NETWALL_CONNECTOR_CONFIG",
        default_value = "connector.toml"
    )]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, env = "NETWALL_LOG_FORMAT")]
    log_format: LogFormat,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

/// Exit status when the gateway rejected the connector for good.
const EXIT_REJECTED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
    let resolved = match netwall_connector::config::ConnectorConfig::load(&cli.config) {
        Ok(r) => r,
        Err(errs) => {
            eprintln!("{errs}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!(
            "{}: ok ({} services)",
            cli.config.display(),
            resolved.services.len()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netwall-connector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let connector = match netwall_connector::start(resolved) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("netwall-connector: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("netwall-connector: cannot watch SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            reason = connector.fatal() => {
                eprintln!("netwall-connector: {reason}");
                return ExitCode::from(EXIT_REJECTED);
            }
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        if connector.shutdown().await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
