//! A real `redis-server` for tests: on a Unix socket of its own (no port to race for),
//! killed when dropped, and able to be killed and started again on the same socket.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::wait_until;

/// `redis-server` on a Unix socket (no TCP port), killed when dropped.
pub struct Redis {
    child: Option<Child>,
    /// The server's socket.
    pub socket: PathBuf,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Redis {
    /// Start a server with extra command-line options (`--requirepass`, ...), and wait until
    /// it answers.
    pub async fn start(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = Redis {
            child: None,
            socket: dir.path().join("redis.sock"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        redis.restart().await;
        redis
    }

    /// The URL a gateway's `[state] url` takes.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Kill the server (its data is gone with it: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Send `sig` to the server (SIGSTOP freezes it: connections stay open, nothing answers).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, sig).expect("signal redis-server");
        }
    }

    /// Start the server (again) on the same socket and wait until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&self.socket)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (ops/test installs it)");
        self.child = Some(child);
        let auth = self.auth_args();
        let socket = self.socket.display().to_string();
        wait_until(Duration::from_secs(10), "redis-server to answer", || {
            let mut args = vec!["-s".to_owned(), socket.clone()];
            args.extend(auth.iter().cloned());
            args.push("PING".into());
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                cli(&args).await.0 == "PONG"
            }
        })
        .await;
    }

    fn auth_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(i) = self.extra.iter().position(|a| a == "--requirepass")
            && let Some(p) = self.extra.get(i + 1)
        {
            out.extend(["--no-auth-warning".to_owned(), "-a".to_owned(), p.clone()]);
        }
        out
    }

    /// Run one command on the server: trimmed stdout.
    pub async fn cmd(&self, args: &[&str]) -> String {
        let mut all = vec!["-s".to_owned(), self.socket.display().to_string()];
        all.extend(self.auth_args());
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        cli(&all).await.0
    }

    /// Connections the server has accepted so far.
    pub async fn connections_received(&self) -> u64 {
        self.cmd(&["INFO", "stats"])
            .await
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_connections_received")
    }
}

/// Run `redis-cli` with `args`: (trimmed stdout, success).
pub async fn cli(args: &[&str]) -> (String, bool) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        match Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => (
                String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                o.status.success(),
            ),
            Err(e) => (format!("redis-cli: {e}"), false),
        }
    })
    .await
    .expect("redis-cli task")
}
