//! Benchmark of the Redis tick claim: for 1, 10 and 100 competing instances claiming the same
//! ticks, the Redis round trips per instance per tick (from `INFO commandstats` deltas) and the
//! claim latency of the winner (p50 / p99).
//!
//! ```text
//! cargo run --release -p cronlock --example claim_bench -- [--redis-url redis://127.0.0.1:6379] [--ticks 200]
//! ```
//! Without `--redis-url` it starts its own `redis-server` on a free port.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use cronlock::backend::{RedisBackend, RedisOptions};
use cronlock::{
    Backend, ClaimOutcome, ClaimRequest, Identity, Outcome, Overlap, RunRecord, TickId,
};
use futures_util::future::join_all;

/// Sum of calls of top-level commands (scripts count once; commands inside scripts excluded),
/// and the server time spent in them (µs).
fn top_level_calls(conn: &mut redis::Connection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
    let mut total = 0;
    let mut usec = 0;
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if !(name.starts_with("evalsha")
            || name.starts_with("eval")
            || name.starts_with("script")
            || name == "ping"
            || name == "unwatch")
        {
            continue;
        }
        let field = |key: &str| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
        };
        total += field("calls=").unwrap_or(0);
        usec += field("usec=").unwrap_or(0);
    }
    Ok((total, usec))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn fmt_us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut url = None;
    let mut ticks: usize = 200;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--redis-url" => url = it.next(),
            "--ticks" => ticks = it.next().context("--ticks needs a value")?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let (_own, url) = match url {
        Some(u) => (None, u),
        None => {
            let server = e2e::redis::RedisServer::start()?;
            let u = server.url();
            (Some(server), u)
        }
    };
    let admin = redis::Client::open(url.as_str())?;
    let mut admin = admin.get_connection()?;
    println!(
        "claim_bench: {ticks} ticks per row, Redis {}",
        cronlock::redact_url(&url)
    );
    println!();
    println!(
        "| instances | ticks | round trips / instance / tick | round trips / tick (all instances) | winning claim p50 | winning claim p99 | all claims p50 | all claims p99 | Redis CPU per script call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [1usize, 10, 100] {
        let job = format!("bench-{n}");
        let backends: Vec<Backend> = (0..n)
            .map(|_| {
                RedisBackend::new(
                    &url,
                    RedisOptions {
                        pool_size: 1,
                        ..RedisOptions::default()
                    },
                )
                .map(|b| Backend::Redis(std::sync::Arc::new(b)))
            })
            .collect::<Result<_, _>>()?;
        let base: i64 = Utc::now().timestamp_millis() / 1000 * 1000;
        let req = |i: usize, tick: i64| -> anyhow::Result<ClaimRequest> {
            Ok(ClaimRequest {
                job: job.clone(),
                tick: TickId::Scheduled(DateTime::from_timestamp_millis(tick).context("time")?),
                keep: Duration::from_secs(60),
                lease_ttl: Duration::from_secs(5),
                overlap: Overlap::Skip,
                identity: Identity {
                    host: "bench".to_owned(),
                    pid: i as u32,
                },
                started_at: Utc::now(),
            })
        };
        // Warm-up: connect every instance and load the scripts (not measured).
        for (i, b) in backends.iter().enumerate() {
            let _ = b.history(&job, 1).await?;
            if let ClaimOutcome::Won(l) = b
                .claim(&req(i, base - 1_000_000 + i as i64 * 1000)?)
                .await?
            {
                b.release(&l).await?;
            }
        }
        let before = top_level_calls(&mut admin)?;
        let mut winners = Vec::with_capacity(ticks);
        let mut all = Vec::with_capacity(ticks * n);
        for t in 0..ticks {
            let tick = base + t as i64 * 1000;
            let reqs: Vec<ClaimRequest> = (0..n)
                .map(|i| req(i, tick))
                .collect::<anyhow::Result<_>>()?;
            // Each instance claims from its own task, as separate processes would.
            let handles: Vec<_> = backends
                .iter()
                .cloned()
                .zip(reqs)
                .map(|(b, r)| {
                    tokio::spawn(async move {
                        let t0 = Instant::now();
                        let out = b.claim(&r).await;
                        (t0.elapsed(), out)
                    })
                })
                .collect();
            let results = join_all(handles).await;
            let mut won = 0;
            for (i, res) in results.into_iter().enumerate() {
                let (lat, out) = res?;
                all.push(lat);
                if let ClaimOutcome::Won(lease) = out? {
                    won += 1;
                    winners.push(lat);
                    let record = RunRecord {
                        job: job.clone(),
                        tick: lease.tick.to_string(),
                        host: "bench".to_owned(),
                        pid: i as u32,
                        token: Some(lease.token),
                        started_at: Utc::now(),
                        duration_ms: 0,
                        outcome: Outcome::Ok,
                        error: None,
                    };
                    backends[i].finish(&lease, &record).await?;
                }
            }
            if won != 1 {
                bail!("tick {t}: {won} winners with {n} instances");
            }
        }
        let after = top_level_calls(&mut admin)?;
        let calls = after.0 - before.0;
        let server_us = (after.1 - before.1) as f64 / calls.max(1) as f64;
        winners.sort();
        all.sort();
        let per = calls as f64 / (n * ticks) as f64;
        println!(
            "| {n} | {ticks} | {per:.2} | {:.2} | {} | {} | {} | {} | {server_us:.1} µs |",
            calls as f64 / ticks as f64,
            fmt_us(pct(&winners, 0.5)),
            fmt_us(pct(&winners, 0.99)),
            fmt_us(pct(&all, 0.5)),
            fmt_us(pct(&all, 0.99)),
        );
    }
    Ok(())
}
