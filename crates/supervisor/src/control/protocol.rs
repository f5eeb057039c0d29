//! The control protocol: length-delimited JSON frames over the Unix control socket; one request,
//! one response per connection turn.

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use crate::logs::record::{LogLine, Stream};

pub use crate::core::report::{
    AppChange, CanaryStage, MemoryRecycleProgress, ReloadMode, ReloadOutcome, ReloadProgress,
    ReloadReport,
};

/// A request from a client (`supervisor status`, `reload`, `restart`, `scale`, `stop`). `app`
/// names an app of the config; a name no app has is answered with [`Response::Error`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The status of every app, or of one.
    Status {
        /// Only this app.
        #[serde(default)]
        app: Option<String>,
    },
    /// A rolling reload of one app, or of every app one at a time; with `wait`, answer when it
    /// finished.
    Reload {
        /// Only this app.
        #[serde(default)]
        app: Option<String>,
        /// Answer only when the reload finished.
        wait: bool,
        /// A canary reload, its `--continue` or `--rollback` (missing: rolling).
        #[serde(default)]
        mode: ReloadMode,
    },
    /// New workers for every slot of an app at once, without readiness gating.
    Restart {
        /// The app.
        app: String,
    },
    /// Run `instances` workers of an app (until the next reload re-reads the file).
    Scale {
        /// The app.
        app: String,
        /// How many.
        instances: usize,
    },
    /// Stop every worker and exit; answered when everything is down.
    Stop,
    /// Drain and stop one app, close its sockets; it stays stopped (through reloads too) until
    /// [`Request::StartApp`]. Answered when its workers are gone.
    StopApp {
        /// The app.
        app: String,
    },
    /// Start an app stopped by hand again, on its sockets bound again. Answered when every slot
    /// has a ready worker, or with the first failure.
    StartApp {
        /// The app.
        app: String,
    },
    /// Clear the restart counters `status` shows, of one app or of every app.
    Reset {
        /// Only this app.
        #[serde(default)]
        app: Option<String>,
    },
    /// Replace the supervisor's own binary in place (same pid, sockets and workers). Answered
    /// with [`Response::Error`] when the upgrade is refused or fails before `execve`; on success
    /// the connection ends with the old process image, and the new one answers `status`.
    Upgrade {
        /// The binary to run (default: the one the supervisor was started from).
        #[serde(default)]
        binary: Option<std::path::PathBuf>,
    },
    /// The last lines of the workers' output (answered with [`Response::Logs`]); with `follow`,
    /// then every new line, in [`Response::LogLines`] frames, until the client leaves.
    Logs {
        /// An app (`web`) or a worker (`web.0`); every app by default.
        #[serde(default)]
        target: Option<String>,
        /// How many of the last lines.
        lines: usize,
        /// Only stdout or only stderr.
        #[serde(default)]
        stream: Option<Stream>,
        /// Only lines read at or after this time (Unix milliseconds).
        #[serde(default)]
        since_ms: Option<i64>,
        /// Keep streaming new lines.
        #[serde(default)]
        follow: bool,
    },
    /// Empty the log files of one app, or of every app, and delete their rotated copies.
    Flush {
        /// Only this app.
        #[serde(default)]
        app: Option<String>,
    },
    /// Close and reopen every log file (after an external logrotate moved them; as `SIGUSR1`).
    ReopenLogs,
}

impl Request {
    /// Whether it is about logs (served from the logs hub, not by the event loop).
    pub fn is_about_logs(&self) -> bool {
        matches!(
            self,
            Request::Logs { .. } | Request::Flush { .. } | Request::ReopenLogs
        )
    }
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Box<StatusReport>),
    /// Answer to [`Request::Reload`]: one report per app reloaded.
    Reload {
        /// In the order the apps were reloaded.
        reports: Vec<ReloadReport>,
    },
    /// Answer to [`Request::Restart`].
    Restarted {
        /// The app.
        app: String,
        /// The generation its new workers run.
        generation: u64,
        /// How many were started.
        workers: usize,
    },
    /// Answer to [`Request::Scale`].
    Scaled {
        /// The app.
        app: String,
        /// Slots before.
        from: usize,
        /// Slots now.
        to: usize,
        /// What to know (until when it holds, or why it was not applied).
        note: Option<String>,
    },
    /// Answer to [`Request::Stop`]: all workers are gone.
    Stopped,
    /// Answer to [`Request::StopApp`]: the app's workers are gone, its sockets closed.
    AppStopped {
        /// The app.
        app: String,
        /// How many workers were drained.
        workers: usize,
        /// It was stopped already.
        already: bool,
    },
    /// Answer to [`Request::StartApp`]: every slot has a ready worker (or it stands by).
    AppStarted {
        /// The app.
        app: String,
        /// Its ready workers' pids, by slot.
        pids: Vec<i32>,
        /// It was running already.
        already: bool,
        /// What else to know.
        note: Option<String>,
    },
    /// Answer to [`Request::Reset`]: these apps' restart counters are cleared.
    Reset {
        /// The apps.
        apps: Vec<String>,
    },
    /// Answer to [`Request::Logs`]: the last lines, oldest first.
    Logs {
        /// The lines.
        lines: Vec<LogLine>,
        /// The files that hold older lines.
        files: Vec<std::path::PathBuf>,
        /// Whether these are all the lines asked for (else the files have more).
        complete: bool,
    },
    /// A frame of the live stream of `logs -f`.
    LogLines {
        /// New lines.
        lines: Vec<LogLine>,
        /// Lines this follower lost, reading too slowly, since the previous frame.
        lost: u64,
    },
    /// Answer to [`Request::Flush`].
    Flushed {
        /// The files emptied.
        files: Vec<std::path::PathBuf>,
    },
    /// Answer to [`Request::ReopenLogs`].
    Reopened {
        /// How many files were open.
        files: usize,
    },
    /// The request could not be served.
    Error { message: String },
}

/// Everything `supervisor status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The supervisor process itself.
    pub supervisor: ProcessInfo,
    /// The supervisor's version.
    pub version: String,
    /// The build (git commit, or the binary's modification time).
    #[serde(default)]
    pub build: String,
    /// The binary it runs.
    #[serde(default)]
    pub binary: String,
    /// In-place upgrades so far, and the last one.
    #[serde(default)]
    pub upgrades: UpgradeInfo,
    /// The supervisor's name (`[supervisor] name`).
    #[serde(default)]
    pub name: String,
    /// Config file in use.
    pub config: String,
    /// Running or stopping.
    pub phase: crate::core::Phase,
    /// The apps, in file order.
    pub apps: Vec<AppStatus>,
}

/// In-place upgrades of the supervisor, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UpgradeInfo {
    /// How many since the supervisor was started.
    pub count: u64,
    /// When the last one happened (Unix seconds).
    pub last_at_unix: Option<f64>,
    /// The version line of the binary the last one came from.
    pub last_from: Option<String>,
    /// Why the last attempt failed, if it did (the supervisor kept running).
    pub last_error: Option<String>,
}

/// One app in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// Its name.
    pub name: String,
    /// Waiting for the apps it is `after`, starting, running, stopping or stopped.
    pub phase: crate::core::Phase,
    /// Removed from the config file by a reload: its workers drain, then it is forgotten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// The apps it still waits for.
    pub waiting_for: Vec<String>,
    /// Current generation (the one new workers are started in).
    pub generation: u64,
    /// How many slots it runs: its `instances`, or what `scale` set (absent from a release
    /// before `monit`: 0).
    #[serde(default)]
    pub instances: usize,
    /// Its listeners.
    pub listeners: Vec<ListenerInfo>,
    /// How its TCP connections are spread over its workers (`balance`; absent from a release
    /// before it: `shared`, the only way then).
    #[serde(default)]
    pub balance: crate::config::Balance,
    /// Every worker process, including draining ones.
    pub workers: Vec<WorkerInfo>,
    /// Slots without a live worker (waiting to restart).
    pub waiting: Vec<SlotInfo>,
    /// The reload in progress, if any.
    pub reload_in_progress: Option<ReloadProgress>,
    /// The outcome of the last finished reload.
    pub last_reload: Option<ReloadReport>,
    /// Its `max_memory`, if it has one.
    #[serde(default)]
    pub max_memory: Option<MemoryLimit>,
    /// Workers replaced because they stayed above `max_memory` (counted when the replacement
    /// became ready), since the supervisor started.
    #[serde(default)]
    pub memory_recycles: u64,
    /// Replacements for memory that failed (the old worker kept serving).
    #[serde(default)]
    pub memory_recycle_failures: u64,
    /// The replacement under way (for memory, a hung worker or age), if any.
    #[serde(default)]
    pub memory_recycling: Option<MemoryRecycleProgress>,
    /// Hung workers replaced (missed or triggered watchdog), since the supervisor started.
    #[serde(default)]
    pub watchdog_replacements: u64,
    /// Watchdogs missed or triggered.
    #[serde(default)]
    pub watchdog_timeouts: u64,
    /// Workers replaced for their age (`max_age`).
    #[serde(default)]
    pub age_replacements: u64,
    /// For a cluster singleton (`scope = "cluster"`): where it runs.
    #[serde(default)]
    pub singleton: Option<SingletonStatus>,
}

/// Where a cluster singleton runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SingletonStatus {
    /// `holder`: this host runs it; `standby`: another host (or, briefly, nobody) does.
    pub role: crate::core::SingletonRole,
    /// The lease holder, `host:pid`, if known.
    pub holder: Option<String>,
    /// The holder's fencing token, if known.
    pub token: Option<u64>,
    /// The lease TTL in seconds.
    pub lease_ttl_secs: f64,
}

/// An app's memory limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MemoryLimit {
    /// Resident memory of a worker's process group above which it is replaced.
    pub bytes: u64,
    /// Seconds a worker must stay above it before it is replaced.
    pub grace_secs: f64,
}

/// A process's resource use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    /// pid.
    pub pid: i32,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// CPU use in percent of one core since the previous status sample (or since start).
    pub cpu_percent: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

impl From<crate::sys::procstat::Sample> for ProcessInfo {
    fn from(s: crate::sys::procstat::Sample) -> ProcessInfo {
        ProcessInfo {
            pid: s.pid,
            uptime_secs: s.uptime_secs,
            cpu_percent: s.cpu_percent,
            rss_bytes: s.rss_bytes,
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Name (`LISTEN_FDNAMES`).
    pub name: String,
    /// Bound address.
    pub address: String,
    /// Its fd number in every worker.
    pub fd: i32,
}

/// One worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub slot: usize,
    /// Name (`app.slot`).
    pub name: String,
    pub generation: u64,
    /// Starting, ready or draining.
    pub state: crate::core::WorkerState,
    /// Restarts of this slot so far.
    pub restarts: u32,
    pub process: ProcessInfo,
    /// Last `STATUS=` text.
    pub status_text: Option<String>,
    /// Seconds it has been above the app's `max_memory` (every sample since), if it is.
    #[serde(default)]
    pub over_max_memory_secs: Option<f64>,
    /// It missed its watchdog (or triggered it) and is being replaced.
    #[serde(default)]
    pub hung: bool,
    /// Its event loop's lag in milliseconds, as its heartbeat last reported it (Node).
    #[serde(default)]
    pub event_loop_lag_ms: Option<f64>,
    /// Established TCP connections its process group holds on the app's listening addresses
    /// (none for an app without a TCP listener, or from a release before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

/// A slot waiting for a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotInfo {
    pub slot: usize,
    /// Backoff or crash loop.
    pub state: crate::core::WaitState,
    /// Restarts so far.
    pub restarts: u32,
    /// Seconds until the next start.
    pub restart_in_secs: f64,
    /// Why the last worker ended.
    pub last_exit: String,
}

/// A control-socket connection, framed.
pub type Conn = Framed<UnixStream, LengthDelimitedCodec>;

/// The largest frame a client accepts (a status report of many workers).
pub const MAX_RESPONSE_FRAME: usize = 16 << 20;

/// The largest request frame the server reads: requests are small, and a longer length prefix is
/// refused before anything is allocated for it.
pub const MAX_REQUEST_FRAME: usize = 64 << 10;

/// The length-delimited codec with frames up to `max` bytes (longer ones are an `InvalidData`
/// error as soon as their length prefix is read).
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec()
}

/// Frames a client's stream (frames up to [`MAX_RESPONSE_FRAME`]).
pub fn framed(stream: UnixStream) -> Conn {
    Framed::new(stream, codec(MAX_RESPONSE_FRAME))
}

/// Sends one JSON message.
pub async fn send<T: Serialize>(conn: &mut Conn, msg: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    conn.send(bytes::Bytes::from(bytes)).await
}

/// Receives one JSON message; `None` at end of stream.
pub async fn recv<T: DeserializeOwned>(conn: &mut Conn) -> std::io::Result<Option<T>> {
    match conn.next().await {
        None => Ok(None),
        Some(frame) => {
            let frame = frame?;
            serde_json::from_slice(&frame)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::report::SlotReplacement;

    #[test]
    fn request_json_shape_is_stable() {
        assert_eq!(
            serde_json::to_string(&Request::Reload {
                app: Some("web".into()),
                wait: true,
                mode: ReloadMode::Canary,
            })
            .unwrap(),
            r#"{"request":"reload","app":"web","wait":true,"mode":"canary"}"#
        );
        let old: Request =
            serde_json::from_str(r#"{"request":"reload","app":"web","wait":true}"#).unwrap();
        assert_eq!(
            old,
            Request::Reload {
                app: Some("web".into()),
                wait: true,
                mode: ReloadMode::Rolling,
            },
            "a client from before canaries asks for a rolling reload"
        );
        assert_eq!(
            serde_json::to_string(&Request::Scale {
                app: "web".into(),
                instances: 4
            })
            .unwrap(),
            r#"{"request":"scale","app":"web","instances":4}"#
        );
        let status: Request = serde_json::from_str(r#"{"request":"status"}"#).unwrap();
        assert_eq!(status, Request::Status { app: None }, "app is optional");
    }

    #[test]
    fn reload_report_json_shape_is_stable() {
        let report = ReloadReport {
            app: "web".into(),
            generation: 4,
            outcome: ReloadOutcome::Aborted,
            reason: Some("new worker exited".into()),
            note: None,
            slots: vec![SlotReplacement {
                slot: 0,
                old_pid: Some(101),
                new_pid: 202,
                ready_secs: 0.25,
            }],
            duration_secs: 1.5,
            change: None,
            changed: vec![],
        };
        let text = r#"{"response":"reload","reports":[{"app":"web","generation":4,"outcome":"aborted","reason":"new worker exited","note":null,"slots":[{"slot":0,"old_pid":101,"new_pid":202,"ready_secs":0.25}],"duration_secs":1.5}]}"#;
        assert_eq!(
            serde_json::to_string(&Response::Reload {
                reports: vec![report]
            })
            .unwrap(),
            text
        );
        let back: Response = serde_json::from_str(text).unwrap();
        assert!(
            matches!(back, Response::Reload { reports } if reports[0].outcome == ReloadOutcome::Aborted)
        );
        for (outcome, word) in [
            (ReloadOutcome::Ok, "ok"),
            (ReloadOutcome::Aborted, "aborted"),
            (ReloadOutcome::Started, "started"),
        ] {
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{word}\"")
            );
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (framed(a), framed(b));
        send(&mut a, &Request::Stop).await.unwrap();
        let got: Option<Request> = recv(&mut b).await.unwrap();
        assert_eq!(got, Some(Request::Stop));
        drop(a);
        let end: Option<Request> = recv(&mut b).await.unwrap();
        assert_eq!(end, None);
    }
}
