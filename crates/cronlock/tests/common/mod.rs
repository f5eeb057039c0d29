//! Test helpers: a private `redis-server` per test (start, kill, restart on the same port,
//! SIGSTOP / SIGCONT), and small polling helpers with deadlines.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[allow(unused_imports)] // not every test binary uses both
pub use e2e::redis::{RedisServer, signal};

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// The pid.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for exit with a deadline (kills on timeout) and returns stdout.
    pub fn wait_output(mut self, timeout: Duration) -> anyhow::Result<String> {
        let mut child = self.0.take().context("already taken")?;
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("child {} did not exit within {timeout:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            so.read_to_string(&mut out)?;
        }
        Ok(out)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Path of a built example (`target/<profile>/examples/<name>`).
pub fn example(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("test binary has no profile dir")?;
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        bail!(
            "example binary {} not found: run through `cargo test` (which builds examples)",
            path.display()
        );
    }
    Ok(path)
}

/// Launches the `cron_instance` example with arguments.
pub fn spawn_instance(args: &[&str]) -> anyhow::Result<ChildGuard> {
    let child = Command::new(example("cron_instance")?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning cron_instance")?;
    Ok(ChildGuard(Some(child)))
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses list entries `tick:token:pid`.
pub fn parse_entries(raw: &[String]) -> Vec<(i64, u64, u32)> {
    raw.iter()
        .filter_map(|s| {
            let mut it = s.split(':');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}
