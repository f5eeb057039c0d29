//! Singleton leases against a private `redis-server` (and the local directory backend): one
//! holder at a time among contenders, renew and release only by the holder, and a SIGSTOPped
//! holder whose lease expired is rejected and fenced off by a lower token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{ChildGuard, RedisServer, example, signal};
use cronlock::{Acquire, Contender, SingletonLease, SingletonLeases};

const TIMEOUT: Duration = Duration::from_millis(500);

fn acquired(a: Acquire) -> SingletonLease {
    match a {
        Acquire::Acquired(l) => l,
        Acquire::Held(h) => panic!("expected to acquire, held by {h:?}"),
    }
}

#[tokio::test]
async fn two_contenders_one_holder_at_a_time() {
    let redis = RedisServer::start().unwrap();
    let leases = Arc::new(SingletonLeases::from_url(&redis.url(), TIMEOUT).unwrap());
    let holders = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..2u32 {
        let (leases, holders, max_seen, tokens) = (
            Arc::clone(&leases),
            Arc::clone(&holders),
            Arc::clone(&max_seen),
            Arc::clone(&tokens),
        );
        tasks.push(tokio::spawn(async move {
            let me = Contender::new("host", 1000 + i);
            let mut turns = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while turns < 5 && tokio::time::Instant::now() < deadline {
                let lease = match leases
                    .acquire("consumer", &me, Duration::from_secs(5))
                    .await
                {
                    Ok(Acquire::Acquired(l)) => l,
                    Ok(Acquire::Held(h)) => {
                        assert!(h.is_some_and(|h| h.id != me.id), "held by someone else");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokens.lock().unwrap().push(lease.token);
                assert!(leases.renew(&lease).await.unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                assert!(leases.release(&lease).await.unwrap());
                turns += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            turns
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 5, "each contender got its turns");
    }
    assert_eq!(max_seen.load(Ordering::SeqCst), 1, "never two holders");
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 10);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens strictly increase from holder to holder: {tokens:?}"
    );
    assert_eq!(leases.holder("consumer").await.unwrap(), None);
}

#[tokio::test]
async fn renew_and_release_by_a_non_holder_fail() {
    let redis = RedisServer::start().unwrap();
    let leases = SingletonLeases::from_url(&redis.url(), TIMEOUT).unwrap();
    let (a, b) = (Contender::new("a", 1), Contender::new("b", 2));
    let ttl = Duration::from_millis(300);
    let la = acquired(leases.acquire("s", &a, ttl).await.unwrap());
    match leases.acquire("s", &b, ttl).await.unwrap() {
        Acquire::Held(Some(h)) => {
            assert_eq!(h.id, a.id);
            assert_eq!(h.token, la.token);
            assert_eq!(h.host_pid(), "a:1");
        }
        other => panic!("b must see a as the holder: {other:?}"),
    }
    // a's lease expires; b takes it over.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let lb = acquired(
        leases
            .acquire("s", &b, Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert!(lb.token > la.token);
    assert!(
        !leases.renew(&la).await.unwrap(),
        "a stale holder cannot renew"
    );
    assert!(!leases.release(&la).await.unwrap(), "nor release");
    let h = leases.holder("s").await.unwrap().unwrap();
    assert_eq!(h.id, b.id, "b's lease is untouched");
    assert!(leases.renew(&lb).await.unwrap());
    assert!(leases.release(&lb).await.unwrap());
    assert_eq!(leases.holder("s").await.unwrap(), None);
}

#[tokio::test]
async fn a_sigstopped_holder_is_rejected_after_expiry_and_has_the_lower_token() {
    let redis = RedisServer::start().unwrap();
    let child = Command::new(example("singleton_holder").unwrap())
        .args([redis.url().as_str(), "paused", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(Some(child));
    let pid = guard.pid();
    let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let old_token: u64 = line.strip_prefix("acquired ").unwrap().parse().unwrap();
    // It renews while it runs.
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "renewed");
    signal(pid, "STOP").unwrap();
    while rx.try_recv().is_ok() {}
    let leases = SingletonLeases::from_url(&redis.url(), TIMEOUT).unwrap();
    let me = Contender::new("next", 2);
    // Held until the paused holder's lease expires, then ours.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lease = loop {
        match leases
            .acquire("paused", &me, Duration::from_secs(10))
            .await
            .unwrap()
        {
            Acquire::Acquired(l) => break l,
            Acquire::Held(_) => {
                assert!(std::time::Instant::now() < deadline, "lease never expired");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        lease.token > old_token,
        "the next holder's token {} is above the paused one's {old_token}",
        lease.token
    );
    signal(pid, "CONT").unwrap();
    let mut saw = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l == "rejected" => {
                saw.push(l);
                break;
            }
            Ok(l) => saw.push(l),
            Err(_) => {}
        }
    }
    assert_eq!(saw.last().map(String::as_str), Some("rejected"), "{saw:?}");
    assert_eq!(leases.holder("paused").await.unwrap().unwrap().id, me.id);
    assert!(leases.renew(&lease).await.unwrap());
}

#[tokio::test]
async fn local_directory_one_holder_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (l1, l2) = (
        SingletonLeases::from_url(&url, TIMEOUT).unwrap(),
        SingletonLeases::from_url(&url, TIMEOUT).unwrap(),
    );
    let (a, b) = (Contender::new("h", 1), Contender::new("h", 2));
    let ttl = Duration::from_millis(100);
    let la = acquired(l1.acquire("s", &a, ttl).await.unwrap());
    // The flock does not expire while its holder lives.
    tokio::time::sleep(ttl * 2).await;
    match l2.acquire("s", &b, ttl).await.unwrap() {
        Acquire::Held(Some(h)) => assert_eq!(h.id, a.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(l2.holder("s").await.unwrap().unwrap().token, la.token);
    assert!(l1.renew(&la).await.unwrap());
    assert!(l1.release(&la).await.unwrap());
    assert!(!l1.renew(&la).await.unwrap());
    assert_eq!(l2.holder("s").await.unwrap(), None);
    let lb = acquired(l2.acquire("s", &b, ttl).await.unwrap());
    assert!(lb.token > la.token);
}

/// The singleton leases share the local job backend's directory and its rules: created 0700,
/// lease and token files 0600, a directory another user could write to is refused.
#[tokio::test]
async fn local_directory_is_private_like_the_job_backends() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    let url = format!("file://{}", dir.display());
    let leases = SingletonLeases::from_url(&url, TIMEOUT).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let lease = acquired(
        leases
            .acquire("s", &Contender::new("h", 1), Duration::from_secs(1))
            .await
            .unwrap(),
    );
    assert_eq!(mode(&dir.join("singleton-s.lease")), 0o600);
    assert_eq!(mode(&dir.join("singleton-s.token")), 0o600);
    assert!(leases.release(&lease).await.unwrap());

    let open = parent.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = SingletonLeases::from_url(&format!("file://{}", open.display()), TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("writable by group or others"), "{e}");
}
