//! `netwall-loadgen challenge`: what the proof-of-work challenge costs.
//!
//! - The gateway's side, in process: microseconds to issue a challenge page, to verify a
//!   solution, and to check a pass (paid by every request on a challenged route).
//! - The visitor's side: headless Chromium opening a challenged page at each difficulty, from
//!   navigation to landing on the content (page load, solving, verify, cookie check and the
//!   reload), with a fresh cookie jar per sample; and the solve time the page itself reported
//!   (the mean of `netwall_challenge_solve_seconds`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netwall_gateway::challenge::config::ChallengeConfig;
use netwall_gateway::challenge::token::{self, KeyRing};
use netwall_gateway::challenge::{Challenge, Shared};
use netwall_tests::browser::{attach, chromium};
use netwall_tests::harness::{Pki, metric, metrics_text, start_sample, start_stack};
use serde_json::json;

#[derive(clap::Args)]
pub struct ChallengeArgs {
    /// Difficulties to measure in the browser, in bits.
    #[arg(long, value_delimiter = ',', default_value = "12,14,16,18,20,22,24")]
    bits: Vec<u8>,
    /// Browser samples per difficulty (fewer when the budget runs out, never under 3).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Seconds of browser time per difficulty after which no new sample starts.
    #[arg(long, default_value_t = 300.0)]
    budget_seconds: f64,
    /// Iterations of each in-process measurement.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Microseconds per call of the gateway's three challenge operations.
async fn gateway_cost(iterations: usize) -> anyhow::Result<serde_json::Value> {
    let config: ChallengeConfig = toml::from_str("difficulty = 1\nmax_difficulty = 1\n")?;
    let shared = Arc::new(Shared::new(KeyRing::random()));
    let challenge = Challenge::new(&config, "/", shared).map_err(anyhow::Error::msg)?;
    let ip: IpAddr = "203.0.113.9".parse()?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/140 Safari/537.36",
        ),
    );
    let now = 1_800_000_000;
    // Issue: sign a seed and render the page.
    let started = Instant::now();
    let mut pages = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        pages.push(challenge.issue(ip, "app.test", &headers, now).response);
    }
    let issue_us = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;
    // Verify: distinct solved seeds (difficulty 1: solving is not what is timed).
    let mut bodies = Vec::with_capacity(iterations);
    for page in pages {
        let body = http_body_util::BodyExt::collect(page.into_body())
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let seed = text
            .split("\"seed\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .ok_or_else(|| anyhow::anyhow!("no seed in the page"))?
            .to_owned();
        let nonce = (0u64..)
            .map(|n| n.to_string())
            .find(|n| token::leading_zero_bits(&token::work_hash(&seed, n)) >= 1)
            .unwrap_or_default();
        bodies.push(json!({"seed": seed, "nonce": nonce, "elapsed_ms": 900}).to_string());
    }
    let started = Instant::now();
    let mut cookie = String::new();
    for b in &bodies {
        let v = challenge
            .verify(b.as_bytes(), ip, "app.test", &headers, now)
            .map_err(anyhow::Error::msg)?;
        if cookie.is_empty()
            && let Some(c) = v.response.headers().get(http::header::SET_COOKIE)
        {
            cookie = c.to_str()?.split(';').next().unwrap_or_default().to_owned();
        }
    }
    let verify_us = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;
    // Pass check, among a browser's usual handful of other cookies.
    headers.insert(
        http::header::COOKIE,
        http::HeaderValue::from_str(&format!("_ga=GA1.1.1; theme=dark; {cookie}; session=abc"))?,
    );
    let started = Instant::now();
    let mut passed = 0;
    for _ in 0..iterations {
        passed += usize::from(challenge.has_pass(ip, "app.test", &headers, now));
    }
    let pass_us = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;
    anyhow::ensure!(passed == iterations, "the pass did not verify");
    Ok(
        json!({"issue_us": issue_us, "verify_us": verify_us, "pass_check_us": pass_us, "iterations": iterations}),
    )
}

/// Run both measurements; the JSON report.
pub async fn run(a: ChallengeArgs) -> anyhow::Result<serde_json::Value> {
    let cost = gateway_cost(a.iterations).await?;
    eprintln!("challenge: gateway cost {cost}");
    let pki = Pki::new();
    let sample = start_sample("challenge-bench").await;
    let routes: String = a
        .bits
        .iter()
        .map(|b| {
            format!(
                "[[route]]\nhost = \"d{b}.app.test\"\ntunnel = \"app\"\nservice = \"web\"\n[route.challenge]\ndifficulty = {b}\nmax_difficulty = {b}\n"
            )
        })
        .collect();
    let (gateway, _connector) =
        start_stack(&pki, &routes, &format!("web = \"http://{sample}\"")).await;
    let admin = gateway
        .admin_addr
        .ok_or_else(|| anyhow::anyhow!("no admin listener"))?;
    let port = gateway.https_addr.port();
    let profile = tempfile::tempdir()?;
    let browser = chromium("about:blank", profile.path());
    let mut page = attach(&browser).await;
    let cores = page.eval("String(navigator.hardwareConcurrency)").await;
    let mut rows = Vec::new();
    for &b in &a.bits {
        let mut times = Vec::new();
        let spent = Instant::now();
        while times.len() < a.samples
            && (times.len() < 3 || spent.elapsed().as_secs_f64() < a.budget_seconds)
        {
            let i = times.len();
            page.call("Network.clearBrowserCookies", json!({})).await;
            let url = format!("https://d{b}.app.test:{port}/content/s{i}");
            let want = format!("content:/content/s{i}");
            let started = Instant::now();
            page.navigate(&url).await;
            page.eval_within(
                Duration::from_secs(3600),
                "landing after the challenge",
                "document.title",
                |t| t == want,
            )
            .await;
            times.push(started.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let m = metrics_text(admin).await;
        let route = format!("route=\"d{b}.app.test/\"");
        let sum = metric(
            &m,
            &format!("netwall_challenge_solve_seconds_sum{{{route}}}"),
        );
        let count = metric(
            &m,
            &format!("netwall_challenge_solve_seconds_count{{{route}}}"),
        );
        let row = json!({
            "bits": b,
            "samples": times.len(),
            "median_s": quantile(&times, 0.5),
            "p95_s": quantile(&times, 0.95),
            "min_s": times.first(),
            "max_s": times.last(),
            "page_reported_mean_s": if count > 0.0 { sum / count } else { f64::NAN },
        });
        eprintln!("challenge: {row}");
        rows.push(row);
    }
    Ok(json!({
        "gateway": cost,
        "browser": {"chromium_cores": cores, "workers": "all but one core (at least one)", "rows": rows},
    }))
}
