//! `netwall-loadgen tcp-sink` and `tcp-copy`: a bulk raw TCP transfer through one path, for the
//! benchmark's TCP-service section.
//!
//! The sink is the walled service. A client opens with one byte and a big-endian u64: `D n`
//! asks the sink to send n bytes and close; `U n` announces n bytes the client sends before
//! half-closing, which the sink counts and answers with the count (8 bytes). `tcp-copy` runs
//! one such transfer and prints its throughput as JSON.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{anyhow, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per read and write: large enough that system calls are not what is measured.
const CHUNK: usize = 256 * 1024;

/// Arguments of `tcp-sink`.
#[derive(clap::Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
}

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Direction {
    /// From the service to the client.
    Down,
    /// From the client to the service.
    Up,
}

/// Arguments of `tcp-copy`.
#[derive(clap::Args)]
pub struct CopyArgs {
    /// The path's address (the sink itself, a tunnel's public port, a TCP route).
    #[arg(long)]
    addr: SocketAddr,
    /// MiB to move.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Which way.
    #[arg(long, value_enum)]
    direction: Direction,
}

/// Serve transfers until killed.
pub async fn sink(a: SinkArgs) -> anyhow::Result<serde_json::Value> {
    let listener = TcpListener::bind(a.listen).await?;
    eprintln!("tcp-sink listening on {}", listener.local_addr()?);
    loop {
        let (s, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve_one(s).await {
                eprintln!("tcp-sink: {e}");
            }
        });
    }
}

async fn serve_one(mut s: TcpStream) -> anyhow::Result<()> {
    let _ = s.set_nodelay(true);
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[1..]);
    let n = u64::from_be_bytes(n);
    let mut buf = vec![0u8; CHUNK];
    match head[0] {
        b'D' => {
            send(&mut s, n, &buf).await?;
            s.shutdown().await?;
        }
        b'U' => {
            let got = receive(&mut s, &mut buf).await?;
            s.write_all(&got.to_be_bytes()).await?;
            s.shutdown().await?;
        }
        other => bail!("unknown request {other:#x}"),
    }
    Ok(())
}

/// Write `n` bytes of `buf`'s content, a chunk at a time.
async fn send(s: &mut TcpStream, n: u64, buf: &[u8]) -> std::io::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        s.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    Ok(())
}

/// Read until the peer's end; how many bytes came.
async fn receive(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut got = 0u64;
    loop {
        match s.read(buf).await? {
            0 => return Ok(got),
            k => got += k as u64,
        }
    }
}

/// One transfer through `a.addr`; its throughput.
pub async fn copy(a: CopyArgs) -> anyhow::Result<serde_json::Value> {
    let bytes = a.mib * 1024 * 1024;
    let started = Instant::now();
    let mut s = TcpStream::connect(a.addr).await?;
    let _ = s.set_nodelay(true);
    let mut head = vec![match a.direction {
        Direction::Down => b'D',
        Direction::Up => b'U',
    }];
    head.extend_from_slice(&bytes.to_be_bytes());
    s.write_all(&head).await?;
    let mut buf = vec![0u8; CHUNK];
    let moved = match a.direction {
        Direction::Down => receive(&mut s, &mut buf).await?,
        Direction::Up => {
            send(&mut s, bytes, &buf).await?;
            s.shutdown().await?;
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await?;
            u64::from_be_bytes(count)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if moved != bytes {
        return Err(anyhow!("moved {moved} of {bytes} bytes"));
    }
    Ok(json!({
        "bytes": bytes,
        "seconds": seconds,
        "mib_per_s": a.mib as f64 / seconds,
    }))
}
