//! `rediss://`: the Redis backend over TLS against a real TLS `redis-server` with a self-signed
//! certificate, trusted through `SSL_CERT_FILE` (read by rustls-native-certs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use chrono::{DateTime, Utc};
use cronlock::{Backend, ClaimOutcome, ClaimRequest, Identity, Overlap, TickId};
use e2e::redis::RedisServer;

#[test]
fn rediss_url_claims_ticks_over_tls() {
    let server = RedisServer::start_tls().unwrap();
    // SAFETY: set before any other thread of this test process exists (the runtime is built
    // below), and nextest runs every test in its own process.
    unsafe { std::env::set_var("SSL_CERT_FILE", server.ca_file()) };
    let url = server.tls_url().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = Backend::from_url(&url).unwrap();
        assert!(backend.describe().starts_with("rediss://"));
        let req = |pid| ClaimRequest {
            job: "tls-job".into(),
            tick: TickId::Scheduled(DateTime::from_timestamp_millis(1_700_000_000_000).unwrap()),
            keep: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(5),
            overlap: Overlap::Skip,
            identity: Identity {
                host: "tls-test".into(),
                pid,
            },
            started_at: Utc::now(),
        };
        let won = backend.claim(&req(1)).await.unwrap();
        let ClaimOutcome::Won(lease) = won else {
            panic!("first claim over TLS must win: {won:?}")
        };
        assert!(matches!(
            backend.claim(&req(2)).await.unwrap(),
            ClaimOutcome::ClaimedElsewhere
        ));
        assert!(backend.release(&lease).await.unwrap());
    });
}
