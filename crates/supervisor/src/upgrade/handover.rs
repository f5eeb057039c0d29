//! What crosses `execve` in an in-place upgrade: a versioned JSON document (carried in a memfd)
//! naming every descriptor the new process inherits (listeners, control socket, metrics
//! listener, and per worker its pidfd, notify socket, `READY_FD` read end and output pipes), and
//! the core's state ([`crate::core::adopt`]). These types are the handover's own: the CLI's wire
//! types may change freely, this format may not. A binary reads every version in
//! [`KNOWN_STATE_VERSIONS`]; `fixtures/handover-v1.json`, recorded from a real upgrade of the
//! first released format, must always be adopted (see the tests).

use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::WorkerId;
use crate::core::adopt::AdoptedApp;
use crate::sys::listeners::BoundListener;

/// The version of the handover state this binary writes.
pub const STATE_VERSION: u32 = 1;

/// The state versions this binary can read.
pub const KNOWN_STATE_VERSIONS: &[u32] = &[1];

/// A listening socket of an app, handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerFd {
    /// `LISTEN_FDNAMES` name.
    pub name: String,
    /// The bound address.
    pub local: String,
    /// The TCP port, if TCP.
    pub port: Option<u16>,
    /// Its backlog.
    pub backlog: i32,
    /// The socket file of a Unix listener.
    pub unix_path: Option<PathBuf>,
    /// The inherited descriptor.
    pub fd: RawFd,
}

impl ListenerFd {
    /// What an upgrade hands over for `l`.
    pub fn of(l: &BoundListener) -> ListenerFd {
        ListenerFd {
            name: l.name.clone(),
            local: l.local.clone(),
            port: l.port,
            backlog: l.backlog,
            unix_path: l.unix_path().map(Path::to_path_buf),
            fd: std::os::fd::AsRawFd::as_raw_fd(&l.fd()),
        }
    }

    /// The listener again, in the new process: `fd` is the inherited socket.
    pub fn take(&self, fd: OwnedFd) -> BoundListener {
        BoundListener::adopted(
            self.name.clone(),
            self.local.clone(),
            self.port,
            self.backlog,
            self.unix_path.clone(),
            fd,
        )
    }
}

/// One app's sockets, handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppFds {
    /// The app.
    pub name: String,
    /// Its listeners, in fd order.
    pub listeners: Vec<ListenerFd>,
}

/// The sockets of an address with a socket per worker slot (`balance = "sticky" | "spread"`),
/// handed over in slot order (the kernel's group order).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupFds {
    /// The address.
    pub local: String,
    /// Sticky or spread.
    pub balance: crate::config::Balance,
    /// The backlog its sockets listen with.
    pub backlog: i32,
    /// The inherited sockets, by slot.
    pub fds: Vec<RawFd>,
}

/// One worker's descriptors, handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerFds {
    /// The worker.
    pub id: WorkerId,
    /// Its pid.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: RawFd,
    /// Its notify socket (bound at `notify_path`).
    pub notify: RawFd,
    /// The socket's path.
    pub notify_path: PathBuf,
    /// The read end of its `READY_FD` pipe.
    pub ready: Option<RawFd>,
    /// The read end of its stdout pipe.
    pub stdout: Option<RawFd>,
    /// The read end of its stderr pipe.
    pub stderr: Option<RawFd>,
}

/// Everything the next binary needs to take over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoverState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Upgrades so far, this one included.
    pub upgrades: u64,
    /// When this upgrade happened (Unix seconds).
    pub upgraded_at_unix: f64,
    /// When the supervisor was first started (Unix seconds).
    pub started_unix: f64,
    /// The version line of the binary handing over.
    pub from_version: String,
    /// The private runtime directory (notify sockets, Node preload): kept.
    pub runtime_dir: PathBuf,
    /// The control socket's listening descriptor.
    pub control_fd: RawFd,
    /// The metrics listener's descriptor, if any.
    pub metrics_fd: Option<RawFd>,
    /// Every app's listeners.
    pub apps: Vec<AppFds>,
    /// The slot sockets of the addresses with a socket per slot (none before they existed).
    #[serde(default)]
    pub groups: Vec<GroupFds>,
    /// The core's state.
    pub core: Vec<AdoptedApp>,
    /// Every worker's descriptors.
    pub workers: Vec<WorkerFds>,
    /// What the metrics accumulated (reload counters and durations).
    #[serde(default)]
    pub metrics: crate::metrics::Registry,
}

/// The handover state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON of the expected shape.
    #[error("handover state unreadable: {0}")]
    Malformed(String),
    /// A version this binary does not know.
    #[error("handover state version {found} is not supported by this binary (it reads {known:?})")]
    Version {
        /// The version found.
        found: u32,
        /// The versions this binary reads.
        known: &'static [u32],
    },
    /// The state could not be turned into JSON.
    #[error("handover state cannot be written: {0}")]
    Unwritable(String),
    /// Reading the memfd failed.
    #[error("cannot read the handover state: {0}")]
    Io(#[from] std::io::Error),
}

/// Refuses a state version this binary does not know.
pub fn check_version(version: u32) -> Result<(), StateError> {
    if KNOWN_STATE_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(StateError::Version {
            found: version,
            known: KNOWN_STATE_VERSIONS,
        })
    }
}

impl HandoverState {
    /// Every descriptor that must survive `execve`.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.control_fd];
        fds.extend(self.metrics_fd);
        for a in &self.apps {
            fds.extend(a.listeners.iter().map(|l| l.fd));
        }
        for g in &self.groups {
            fds.extend(&g.fds);
        }
        for w in &self.workers {
            fds.extend([w.pidfd, w.notify]);
            fds.extend(w.ready);
            fds.extend(w.stdout);
            fds.extend(w.stderr);
        }
        fds
    }

    /// The JSON text (an error, never an empty document, if it cannot be written).
    pub fn to_json(&self) -> Result<String, StateError> {
        serde_json::to_string(self).map_err(|e| StateError::Unwritable(e.to_string()))
    }

    /// Parses the JSON text, checking the version first.
    pub fn from_json(text: &str) -> Result<HandoverState, StateError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_str(text).map_err(|e| StateError::Malformed(e.to_string()))?;
        check_version(v.version)?;
        serde_json::from_str(text).map_err(|e| StateError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    use crate::core::WorkerState;
    use crate::core::adopt::{AdoptedSlot, AdoptedWorker};

    fn state() -> HandoverState {
        HandoverState {
            version: STATE_VERSION,
            upgrades: 2,
            upgraded_at_unix: 1_800_000_000.5,
            started_unix: 1_700_000_000.0,
            from_version: "0.1.0 (git abc)".into(),
            runtime_dir: "/tmp/supervisor-42".into(),
            control_fd: 5,
            metrics_fd: Some(6),
            apps: vec![AppFds {
                name: "demo".into(),
                listeners: vec![ListenerFd {
                    name: "http".into(),
                    local: "127.0.0.1:3000".into(),
                    port: Some(3000),
                    backlog: 1024,
                    unix_path: None,
                    fd: 7,
                }],
            }],
            groups: vec![GroupFds {
                local: "127.0.0.1:3001".into(),
                balance: crate::config::Balance::Sticky,
                backlog: 1024,
                fds: vec![20, 21],
            }],
            core: vec![AdoptedApp {
                id: None,
                name: "demo".into(),
                stopped: false,
                generation: 3,
                last_generation: Some(4),
                next_id: (1 << 32) + 9,
                restarts_total: 4,
                memory_recycles: 1,
                memory_recycle_failures: 0,
                last_reload: None,
                scaled: Some(1),
                slots: vec![AdoptedSlot {
                    generation: 3,
                    restarts: 4,
                    consecutive_failures: 1,
                    recent_failures_ago: vec![Duration::from_millis(1500)],
                    last_exit: Some("signal 9 while ready".into()),
                    worker: Some(AdoptedWorker {
                        id: (1 << 32) + 8,
                        generation: 3,
                        pid: 4242,
                        slot: 0,
                        state: WorkerState::Ready,
                        kill_in: None,
                        age: Duration::from_millis(2500),
                        status_text: Some("serving".into()),
                    }),
                    restart_in: None,
                }],
                draining: vec![],
            }],
            workers: vec![WorkerFds {
                id: (1 << 32) + 8,
                pid: 4242,
                pidfd: 8,
                notify: 9,
                notify_path: "/tmp/supervisor-42/notify-1.sock".into(),
                ready: Some(10),
                stdout: Some(11),
                stderr: None,
            }],
            metrics: Default::default(),
        }
    }

    #[test]
    fn the_state_survives_a_round_trip_through_json() {
        let s = state();
        let back = HandoverState::from_json(&s.to_json().unwrap()).unwrap();
        assert_eq!(back.to_json().unwrap(), s.to_json().unwrap());
        assert_eq!(back.core[0].slots[0].worker.as_ref().unwrap().pid, 4242);
        assert_eq!(
            back.core[0].slots[0].recent_failures_ago,
            vec![Duration::from_millis(1500)]
        );
        assert_eq!(back.fds(), vec![5, 6, 7, 20, 21, 8, 9, 10, 11]);
        assert_eq!(back.groups, s.groups, "slot sockets by slot");
    }

    #[test]
    fn an_unknown_version_is_refused_before_the_rest_is_read() {
        let mut s = state();
        s.version = STATE_VERSION + 1;
        let e = HandoverState::from_json(&s.to_json().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("version {}", STATE_VERSION + 1)), "{e}");
        assert!(check_version(STATE_VERSION).is_ok());
        assert!(check_version(0).is_err());
        let e = HandoverState::from_json("{\"version\": 1, \"upgrades\": \"x\"}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreadable"), "{e}");
    }

    /// The first released format, recorded from a real upgrade (fcb12cf, the same format as the
    /// release b96d0f7): apps `web` (2 workers on a TCP listener, reloaded once) and `queue`
    /// (scaled to 2, one crash restart).
    pub const V1: &str = include_str!("fixtures/handover-v1.json");

    #[test]
    fn the_recorded_v1_document_is_still_read_whole() {
        let s = HandoverState::from_json(V1).unwrap();
        assert_eq!((s.version, s.upgrades), (1, 1));
        assert_eq!(s.from_version, "0.1.0 (git fcb12cf2eabd)");
        assert_eq!(s.runtime_dir, PathBuf::from("/tmp/supervisor-7067"));
        assert_eq!((s.control_fd, s.metrics_fd), (13, None));
        let names: Vec<&str> = s.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web", "queue"]);
        let l = &s.apps[0].listeners[0];
        assert_eq!(
            (l.name.as_str(), l.local.as_str(), l.port, l.backlog, l.fd),
            ("http", "127.0.0.1:43471", Some(43471), 1024, 12)
        );
        assert_eq!(
            s.fds(),
            vec![
                13, 12, 16, 18, 20, 21, 22, 26, 28, 30, 31, 32, 42, 44, 46, 47, 48, 51, 53, 55, 56,
                57
            ]
        );
        let w = &s.workers[2];
        assert_eq!((w.id, w.pid, w.pidfd, w.notify), (4294967298, 7185, 42, 44));
        assert_eq!(
            w.notify_path,
            PathBuf::from("/tmp/supervisor-7067/notify-4294967298.sock")
        );
        assert_eq!(
            (w.ready, w.stdout, w.stderr),
            (Some(46), Some(47), Some(48))
        );
        // The core's part.
        let web = &s.core[0];
        assert_eq!(
            (web.generation, web.last_generation, web.next_id),
            (2, Some(2), 4294967300)
        );
        let last = web.last_reload.as_ref().unwrap();
        assert_eq!((last.generation, last.slots.len()), (2, 2));
        assert_eq!(
            (last.slots[0].old_pid, last.slots[0].new_pid),
            (Some(7077), 7185)
        );
        let slot = &web.slots[0];
        let worker = slot.worker.as_ref().unwrap();
        assert_eq!(
            (worker.pid, worker.state, worker.age),
            (7185, WorkerState::Ready, Duration::new(2, 881385364))
        );
        let queue = &s.core[1];
        assert_eq!((queue.restarts_total, queue.scaled), (1, Some(2)));
        assert_eq!(
            queue.slots[0].last_exit.as_deref(),
            Some("signal 9 while ready")
        );
        assert_eq!(queue.slots[0].restarts, 1);
        // What the metrics had accumulated.
        let back = serde_json::to_value(&s.metrics).unwrap();
        assert_eq!(back["reloads"]["web"]["ok"], 1, "{back}");
        // This binary's core takes it over: the same workers, generations and history.
        let apps = vec![
            (crate::core::test_support::settings("web", 2, 1, 0), vec![]),
            (
                crate::core::test_support::settings("queue", 1, 1, 0),
                vec![0],
            ),
        ];
        let now = tokio::time::Instant::now();
        let (core, _) = crate::core::Core::adopt(apps, s.core.clone(), now);
        let views: Vec<_> = core.apps().map(|v| v.app.snapshot(now)).collect();
        let pids =
            |i: usize| -> Vec<i32> { views[i].workers.iter().filter_map(|(w, _)| w.pid).collect() };
        assert_eq!(pids(0), [7185, 7186]);
        assert_eq!(pids(1), [7249, 7294], "scaled to 2 by the old binary");
        assert_eq!(views[0].generation, 2);
        assert!(
            views[0]
                .workers
                .iter()
                .all(|(w, _)| w.state == WorkerState::Ready)
        );
        let last = views[0].last_reload.as_ref().unwrap();
        assert_eq!((last.generation, last.slots[1].new_pid), (2, 7186));
        assert_eq!(views[1].restarts_total, 1);
        assert_eq!(
            core.not_upgradable(),
            None,
            "settled, as it was handed over"
        );
        // Written again by this binary, it reads the same.
        let again = HandoverState::from_json(&s.to_json().unwrap()).unwrap();
        assert_eq!(again.to_json().unwrap(), s.to_json().unwrap());
    }
}
