//! `bench_proxy`: the sequential latency client behind `scripts/bench-proxy`.
//!
//! `latency` sends N requests one after another to one URL and prints p50/p99/mean, either of
//! the whole response or, with `--stream`, of the time to the first SSE event (time to first
//! token). `compare` measures the same request directly against the backend and through the
//! proxy, interleaved (ABBA) so that drift hits both sides alike, for a whole and a streamed
//! request, and prints a Markdown table with the cost the proxy adds. Percentiles are
//! `sentinel_bench::stats`'s (nearest rank).

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use sentinel_bench::stats::Summary;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "bench_proxy",
    bin_name = "bench_proxy",
    about = "Sequential latency client: proxy vs direct"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Latency percentiles of N sequential requests to one URL.
    Latency {
        /// The full URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
        #[arg(long)]
        url: String,
        /// Sent as `Authorization: Bearer KEY`.
        #[arg(long, default_value = "")]
        key: String,
        /// Measure the time to the first SSE event of a streamed answer.
        #[arg(long)]
        stream: bool,
        #[command(flatten)]
        load: Load,
    },
    /// Direct vs proxy, whole and streamed, as a Markdown table.
    Compare {
        /// The row label, e.g. "fake upstream" or the model name.
        #[arg(long)]
        label: String,
        /// Base URL of the backend itself (http://127.0.0.1:PORT).
        #[arg(long)]
        direct: String,
        #[arg(long, default_value = "")]
        direct_key: String,
        /// Base URL of the proxy (http://127.0.0.1:PORT).
        #[arg(long)]
        proxy: String,
        #[arg(long, default_value = "")]
        proxy_key: String,
        /// Path appended to both base URLs.
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        /// Do not print the table header (to append rows to an earlier table).
        #[arg(long)]
        no_header: bool,
        /// Target: largest acceptable added p50, in milliseconds.
        #[arg(long, value_name = "MS")]
        max_added_p50: Option<f64>,
        /// Target: largest acceptable added p99, in milliseconds.
        #[arg(long, value_name = "MS")]
        max_added_p99: Option<f64>,
        /// Target: largest acceptable p50 ratio proxy/direct.
        #[arg(long, value_name = "RATIO")]
        max_ratio: Option<f64>,
        #[command(flatten)]
        load: Load,
    },
}

#[derive(Args, Debug, Clone)]
struct Load {
    /// Measured requests (per side in `compare`).
    #[arg(short = 'n', long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Unmeasured requests first (per side), to warm connections and caches.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The JSON request body; `"stream": true` is added for streamed measurements.
    #[arg(
        long,
        default_value = r#"{"messages":[{"role":"user","content":"Say OK."}],"max_tokens":8,"temperature":0}"#
    )]
    body: String,
}

/// One side of a measurement: where to send and what.
struct Endpoint {
    url: String,
    key: String,
    body: Bytes,
    stream: bool,
}

fn body_for(body: &str, stream: bool) -> anyhow::Result<Bytes> {
    let mut json: serde_json::Value =
        serde_json::from_str(body).context("--body is not valid JSON")?;
    if stream {
        json["stream"] = serde_json::Value::Bool(true);
    }
    Ok(Bytes::from(json.to_string()))
}

/// Sends one request; returns the time to the whole answer, or to the first SSE event.
async fn once(client: &reqwest::Client, target: &Endpoint) -> anyhow::Result<f64> {
    let mut request = client
        .post(&target.url)
        .header("content-type", "application/json")
        .body(target.body.clone());
    if !target.key.is_empty() {
        request = request.bearer_auth(&target.key);
    }
    let retry = request.try_clone();
    let mut start = Instant::now();
    let mut sent = request.send().await;
    // A keep-alive connection the server closed just as we reused it fails before any answer:
    // retry once on a fresh connection, timing only the retry.
    if let (Err(e), Some(retry)) = (&sent, retry) {
        if e.is_request() || e.is_connect() {
            eprintln!("bench_proxy: retrying once after: {e}");
            start = Instant::now();
            sent = retry.send().await;
        }
    }
    let mut response = sent.with_context(|| format!("POST {} failed", target.url))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        bail!("POST {} answered {status}: {text}", target.url);
    }
    if !target.stream {
        let body = response
            .bytes()
            .await
            .context("reading the answer failed")?;
        let elapsed = start.elapsed();
        if body.is_empty() {
            bail!("POST {} answered an empty body", target.url);
        }
        return Ok(ms(elapsed));
    }
    let mut first = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("reading the stream failed")?
    {
        if first.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            first = Some(start.elapsed());
        }
    }
    first
        .map(ms)
        .with_context(|| format!("POST {} streamed no SSE event", target.url))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn latency(
    client: &reqwest::Client,
    target: &Endpoint,
    load: &Load,
) -> anyhow::Result<Summary> {
    for _ in 0..load.warmup {
        once(client, target).await?;
    }
    let mut samples = Vec::new();
    for _ in 0..load.requests {
        samples.push(once(client, target).await?);
    }
    Ok(Summary::of(&samples))
}

/// Direct and proxy latencies of the same request, alternating which side goes first.
async fn compare(
    client: &reqwest::Client,
    direct: &Endpoint,
    proxy: &Endpoint,
    load: &Load,
) -> anyhow::Result<(Summary, Summary)> {
    for _ in 0..load.warmup {
        once(client, direct).await?;
        once(client, proxy).await?;
    }
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for i in 0..load.requests {
        if i % 2 == 0 {
            d.push(once(client, direct).await?);
            p.push(once(client, proxy).await?);
        } else {
            p.push(once(client, proxy).await?);
            d.push(once(client, direct).await?);
        }
    }
    Ok((Summary::of(&d), Summary::of(&p)))
}

/// The pass/fail verdict of one row against the targets given on the command line.
fn verdict(added_p50: f64, added_p99: f64, ratio: f64, limits: [Option<f64>; 3]) -> String {
    let checks = [
        (added_p50, limits[0], "added p50"),
        (added_p99, limits[1], "added p99"),
        (ratio, limits[2], "ratio"),
    ];
    let missed: Vec<String> = checks
        .iter()
        .filter_map(|&(value, limit, name)| {
            let limit = limit?;
            (value > limit).then(|| format!("{name} {value:.3} > {limit}"))
        })
        .collect();
    match (limits.iter().all(Option::is_none), missed.is_empty()) {
        (true, _) => "-".into(),
        (false, true) => "met".into(),
        (false, false) => format!("MISSED: {}", missed.join(", ")),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        // llama-server (cpp-httplib) closes connections idle for 5 s; never reuse one that old.
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(600))
        .build()
        .context("could not build the HTTP client")?;
    match cli.command {
        Command::Latency {
            url,
            key,
            stream,
            load,
        } => {
            let body = body_for(&load.body, stream)?;
            let stats = latency(
                &client,
                &Endpoint {
                    url,
                    key,
                    body,
                    stream,
                },
                &load,
            )
            .await?;
            let what = if stream {
                "time to first event"
            } else {
                "whole answer"
            };
            println!(
                "{what}: n={} p50={:.3} ms p99={:.3} ms mean={:.3} ms",
                stats.count, stats.p50, stats.p99, stats.mean
            );
        }
        Command::Compare {
            label,
            direct,
            direct_key,
            proxy,
            proxy_key,
            path,
            no_header,
            max_added_p50,
            max_added_p99,
            max_ratio,
            load,
        } => {
            if !no_header {
                println!("| target | request | n | direct p50 | direct p99 | proxy p50 | proxy p99 | added p50 | added p99 | p50 ratio | target |");
                println!("|---|---|---|---|---|---|---|---|---|---|---|");
            }
            for stream in [false, true] {
                let body = body_for(&load.body, stream)?;
                let side = |base: &str, key: &str| Endpoint {
                    url: format!("{base}{path}"),
                    key: key.to_string(),
                    body: body.clone(),
                    stream,
                };
                let (d, p) = compare(
                    &client,
                    &side(&direct, &direct_key),
                    &side(&proxy, &proxy_key),
                    &load,
                )
                .await?;
                let (added50, added99) = (p.p50 - d.p50, p.p99 - d.p99);
                let ratio = p.p50 / d.p50;
                let request = if stream {
                    "stream, first event"
                } else {
                    "whole answer"
                };
                println!(
                    "| {label} | {request} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {added50:+.3} ms | {added99:+.3} ms | {ratio:.3} | {} |",
                    load.requests,
                    d.p50,
                    d.p99,
                    p.p50,
                    p.p99,
                    verdict(added50, added99, ratio, [max_added_p50, max_added_p99, max_ratio]),
                );
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .context("could not start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_proxy: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
