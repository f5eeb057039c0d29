//! Fixtures for the core's tests: an app's settings with short, round timeouts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::AppSettings;
use crate::config::{Readiness, ReloadPolicy, RestartPolicy, Runtime, WorkerSpec};

/// App `name` with `instances` workers: ready timeout 5 s, kill timeout 10 s, backoff 100 ms
/// doubling to 2 s, crash loop above 3 restarts in 60 s, reload with `surge` and `unavailable`.
pub fn settings(name: &str, instances: usize, surge: usize, unavailable: usize) -> AppSettings {
    AppSettings {
        spec: Arc::new(WorkerSpec {
            name: name.into(),
            program: PathBuf::from("/bin/true"),
            args: vec![],
            env: Default::default(),
            cwd: PathBuf::from("/"),
            instances,
            readiness: Readiness::Notify,
            runtime: Runtime::None,
            ready_timeout: Duration::from_secs(5),
            kill_timeout: Duration::from_secs(10),
        }),
        restart: RestartPolicy {
            min_uptime: Duration::from_secs(1),
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        },
        reload: ReloadPolicy {
            max_surge: surge,
            max_unavailable: unavailable,
        },
        not_ready_hint: None,
    }
}
