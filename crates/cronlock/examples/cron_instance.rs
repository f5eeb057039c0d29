//! A scheduler process for the multi-process tests: runs one job that RPUSHes
//! `tick_millis:token:pid` to a Redis list when it starts, then works for `--job-ms`.
//!
//! ```text
//! cron_instance --redis-url redis://127.0.0.1:PORT --list runs [--job NAME] [--schedule EXPR]
//!               [--run-secs N] [--offset-ms N] [--job-ms N] [--lease-ms N]
//! ```
//! Prints the final counters as one JSON line on stdout.

use std::time::Duration;

use anyhow::{Context, bail};
use cronlock::{Backend, Identity, Job, JobSpec, Scheduler, TickId};
use tokio_util::sync::CancellationToken;

struct Args {
    redis_url: String,
    list: String,
    job: String,
    schedule: String,
    run_secs: u64,
    offset_ms: i64,
    job_ms: u64,
    lease_ms: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        redis_url: String::new(),
        list: "runs".to_owned(),
        job: "every-second".to_owned(),
        schedule: "* * * * * *".to_owned(),
        run_secs: 10,
        offset_ms: 0,
        job_ms: 0,
        lease_ms: 5000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--redis-url" => a.redis_url = value,
            "--list" => a.list = value,
            "--job" => a.job = value,
            "--schedule" => a.schedule = value,
            "--run-secs" => a.run_secs = value.parse()?,
            "--offset-ms" => a.offset_ms = value.parse()?,
            "--job-ms" => a.job_ms = value.parse()?,
            "--lease-ms" => a.lease_ms = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.redis_url.is_empty() {
        bail!("--redis-url is required");
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let client = redis::Client::open(args.redis_url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let backend = Backend::from_url(&args.redis_url)?;
    let mut scheduler = Scheduler::new(backend, Identity::current())
        .with_clock_offset(chrono::Duration::milliseconds(args.offset_ms));
    let spec = JobSpec::new(args.job.clone(), args.schedule.clone())
        .lease_ttl(Duration::from_millis(args.lease_ms));
    let list = args.list.clone();
    let job_ms = args.job_ms;
    scheduler.add(Job::new(spec, move |ctx| {
        let mut conn = conn.clone();
        let list = list.clone();
        async move {
            let tick = match &ctx.tick_id {
                TickId::Scheduled(t) => t.timestamp_millis().to_string(),
                TickId::Manual(id) => format!("manual-{id}"),
            };
            let entry = format!("{tick}:{}:{}", ctx.token, std::process::id());
            redis::cmd("RPUSH")
                .arg(&list)
                .arg(entry)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = ctx.cancel.cancelled() => Err("cancelled".to_owned()),
                _ = tokio::time::sleep(Duration::from_millis(job_ms)) => Ok(()),
            }
        }
    }))?;
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let run_secs = args.run_secs;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(run_secs)).await;
        stopper.cancel();
    });
    let stats = scheduler.run(shutdown, Duration::from_secs(2)).await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
