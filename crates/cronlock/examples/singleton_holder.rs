//! A singleton lease holder for the multi-process tests: acquires the lease of `NAME` (waiting
//! for it), prints `acquired <token>`, renews it every ttl/3 and prints `renewed` or `rejected`
//! (then exits 0) or `error <reason>`.
//!
//! ```text
//! singleton_holder URL NAME TTL_MS
//! ```

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use cronlock::{Acquire, Contender, SingletonLeases};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().context("URL")?;
    let name = args.next().context("NAME")?;
    let ttl = Duration::from_millis(args.next().context("TTL_MS")?.parse()?);
    let leases = SingletonLeases::from_url(&url, Duration::from_millis(500))?;
    let me = Contender::current();
    let lease = loop {
        match leases.acquire(&name, &me, ttl).await? {
            Acquire::Acquired(l) => break l,
            Acquire::Held(_) => tokio::time::sleep(ttl / 3).await,
        }
    };
    let mut out = std::io::stdout();
    writeln!(out, "acquired {}", lease.token)?;
    out.flush()?;
    loop {
        tokio::time::sleep(ttl / 3).await;
        match leases.renew(&lease).await {
            Ok(true) => writeln!(out, "renewed")?,
            Ok(false) => {
                writeln!(out, "rejected")?;
                out.flush()?;
                return Ok(());
            }
            Err(e) => writeln!(out, "error {e}")?,
        }
        out.flush()?;
    }
}
