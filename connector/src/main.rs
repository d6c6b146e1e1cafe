//! `netwall-connector`: the sidecar that dials out to netwall gateways.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Answer a probe from the status file a running connector keeps (`status_file`), and
    /// exit: 0 when it holds, 1 when not. `live`: the connector is running; `ready`: it also
    /// has a live tunnel connection.
    #[arg(long, value_enum)]
    probe: Option<Probe>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a WireGuard key pair: the private key goes in the file named by
    /// `wireguard_private_key_file` (mode 0600), the public key in the gateway's
    /// `[[tunnel]] wireguard_public_key`.
    WgKeygen,
}

#[derive(Clone, Copy, ValueEnum)]
enum Probe {
    Live,
    Ready,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

/// `--probe`: read the status file and judge it.
fn answer_probe(probe: Probe, file: Option<&std::path::Path>) -> ExitCode {
    use netwall_connector::status::Status;
    let Some(file) = file else {
        eprintln!("netwall-connector: --probe needs status_file in the configuration");
        return ExitCode::FAILURE;
    };
    let status = match std::fs::read_to_string(file) {
        Ok(text) => Status::parse(&text),
        Err(e) => {
            println!("not live: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(status) = status else {
        println!("not live: {} is not a status file", file.display());
        return ExitCode::FAILURE;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (ok, what) = match probe {
        Probe::Live => (status.is_fresh(now), "live"),
        Probe::Ready => (status.is_ready(now), "ready"),
    };
    let age = now.saturating_sub(status.updated);
    if ok {
        println!(
            "{what}: {} tunnel connections, status {age} s old",
            status.live
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "not {what}: {} tunnel connections, status {age} s old",
            status.live
        );
        ExitCode::FAILURE
    }
}

/// Exit status when the gateway rejected the connector for good.
const EXIT_REJECTED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::WgKeygen) = cli.command {
        let (private, public) = netwall_tunnel::wireguard::keys::generate();
        println!("private_key = {private}");
        println!("public_key  = {public}");
        return ExitCode::SUCCESS;
    }
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
    if let Some(probe) = cli.probe {
        return answer_probe(probe, resolved.status_file.as_deref());
    }
    if cli.check {
        println!(
            "{}: ok ({} services)",
            cli.config.display(),
            resolved.services.len()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match netwall_runtime::build(resolved.config.workers()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netwall-connector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Watched before the first dial, so a signal sent once the tunnel is up is handled.
        let watch = |kind: tokio::signal::unix::SignalKind, name: &str| {
            tokio::signal::unix::signal(kind)
                .map_err(|e| eprintln!("netwall-connector: cannot watch {name}: {e}"))
        };
        let (Ok(mut term), Ok(mut hup)) = (
            watch(tokio::signal::unix::SignalKind::terminate(), "SIGTERM"),
            watch(tokio::signal::unix::SignalKind::hangup(), "SIGHUP"),
        ) else {
            return ExitCode::FAILURE;
        };
        let connector = match netwall_connector::start(resolved) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("netwall-connector: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            tokio::select! {
                reason = connector.fatal() => {
                    eprintln!("netwall-connector: {reason}");
                    return ExitCode::from(EXIT_REJECTED);
                }
                _ = hup.recv() => {
                    // Errors are logged by the reload; the running configuration stays.
                    let _ = connector.reload_file(&cli.config);
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        if connector.shutdown().await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
