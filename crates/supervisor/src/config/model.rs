//! The validated configuration's types, as the rest of the supervisor uses them: what a worker
//! runs ([`WorkerSpec`]), where it listens ([`ListenerSpec`]), the restart, reload, memory and
//! singleton policies of an app, the `[[job]]` tables ([`JobConfig`]), and the defaults and
//! bounds the validator applies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How the supervisor learns that a worker is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// The worker says `READY=1` on `NOTIFY_SOCKET` or writes a newline to `READY_FD`.
    Notify,
    /// The worker counts as ready as soon as its program was executed (systemd `Type=exec`).
    Exec,
}

/// How an app's TCP connections are spread over its workers (`balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// One listening socket per address, shared by every worker: one accept queue, each
    /// connection taken by whichever worker accepts first (the default).
    #[default]
    Shared,
    /// One socket per worker slot (`SO_REUSEPORT`), the kernel picking a slot's socket from a
    /// hash of the client's address: every connection from one address reaches the same worker
    /// while the set of serving workers is unchanged (socket.io long-polling, sessions kept in a
    /// worker's memory).
    Sticky,
    /// One socket per worker slot, picked from a hash of the connection's addresses and ports:
    /// connections are spread evenly over the workers, whichever is fastest to accept.
    Spread,
}

impl Balance {
    /// It gives each slot its own socket (sticky or spread).
    pub fn per_slot(self) -> bool {
        self != Balance::Shared
    }
}

/// Only its names, as strings: serde's derived form would also take a table (`{ sticky = {} }`)
/// and call a number "wanted string or table".
impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Balance, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Balance;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"shared\", \"sticky\" or \"spread\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Balance, E> {
                match v {
                    "shared" => Ok(Balance::Shared),
                    "sticky" => Ok(Balance::Sticky),
                    "spread" => Ok(Balance::Spread),
                    _ => Err(E::unknown_variant(v, &["shared", "sticky", "spread"])),
                }
            }
        }
        d.deserialize_str(Name)
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::Shared => "shared",
            Balance::Sticky => "sticky",
            Balance::Spread => "spread",
        })
    }
}

/// Where an app runs: on every host (each supervisor runs its workers), or on exactly one host
/// of those sharing the cron backend at a time (a cluster singleton).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every supervisor runs it (the default).
    #[default]
    Host,
    /// One supervisor at a time runs it: the holder of its lease in the cron backend.
    Cluster,
}

/// The lease of a cluster singleton app (`scope = "cluster"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingletonPolicy {
    /// Lease TTL: how long the lease outlives its holder's last renewal; renewed every ttl/3.
    pub lease_ttl: Duration,
    /// How often a standby host tries to take the lease.
    pub standby_poll: Duration,
}

impl SingletonPolicy {
    /// How often the holder renews: a third of the TTL.
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// What the supervisor adds to a worker for the language it runs (see [`crate::runtimes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Node: the built-in preload takes the inherited sockets for the app's own `listen()`,
    /// reports readiness and drains on SIGTERM, so an unchanged app reloads without failures.
    Node,
    /// Nothing: the program follows the worker protocol itself.
    None,
}

impl Runtime {
    /// The default for a program: `node` for a program whose file name is `node` (or `nodejs`,
    /// `node20`, ...), otherwise `none`.
    pub fn detect(program: &Path) -> Runtime {
        if looks_like_node(program) {
            Runtime::Node
        } else {
            Runtime::None
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::Node => "node",
            Runtime::None => "none",
        })
    }
}

/// Whether the program is Node by its file name (`node`, `nodejs`, `node20`): what `runtime`
/// defaults on.
pub(super) fn looks_like_node(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("node"))
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (IPv4 or IPv6). Port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One listening socket to bind once and pass to every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Address to bind.
    pub addr: ListenAddr,
    /// `listen(2)` backlog.
    pub backlog: i32,
    /// The config key this came from, for errors (`listen[0]`).
    pub key: String,
    /// How its connections are spread over the workers: the app's `balance` for a TCP
    /// address, always [`Balance::Shared`] for a Unix socket (one queue; `SO_REUSEPORT` is
    /// TCP's).
    pub balance: Balance,
}

/// What to run as a worker; one generation of workers shares one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The app's name, used in worker names (`web.0`).
    pub name: String,
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Extra environment on top of the supervisor's own.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Number of worker slots.
    pub instances: usize,
    /// Readiness protocol.
    pub readiness: Readiness,
    /// What the supervisor adds for the program's language.
    pub runtime: Runtime,
    /// How long a new worker may take to become ready.
    pub ready_timeout: Duration,
    /// How long a stopping worker may drain before its process group is killed.
    pub kill_timeout: Duration,
    /// Whether the workers get the cron backend's URL (`SUPERVISOR_CRON_URL`, with its
    /// password): only apps that run jobs in-process ask for it (`cron_backend = true`).
    pub cron_backend: bool,
    /// PM2's app contract (`kill_signal`, `wait_ready`, `shutdown_with_message`).
    pub contract: AppContract,
    /// systemd's watchdog (`WATCHDOG_USEC`): a ready worker that sends no `WATCHDOG=1` for this
    /// long (or sends `WATCHDOG=trigger`) is hung and replaced.
    pub watchdog: Option<Duration>,
    /// Who the workers run as and their resource limits (`user`, `group`, `[app.rlimits]`).
    pub confine: Confinement,
}

/// Who an app's workers run as and the limits they start with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// `user` (and `group`): `None` runs them as the supervisor's user.
    pub user: Option<RunAs>,
    /// `[app.rlimits]`, set before `execve`.
    pub rlimits: Vec<Rlimit>,
    /// `[app.cgroup]`: a cgroup v2 of the app's own, where the supervisor may create one.
    pub cgroup: Option<CgroupLimits>,
}

/// `[app.cgroup]`: the limits of the app's cgroup, as cgroup v2 files take them. `None` leaves a
/// file as the kernel makes it (no limit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupLimits {
    /// `memory.max` in bytes ([`CGROUP_MAX`]: `max`).
    pub memory_max: Option<u64>,
    /// `cpu.max`: microseconds of CPU time per [`CPU_PERIOD_US`] ([`CGROUP_MAX`]: `max`).
    pub cpu_max: Option<u64>,
    /// `pids.max` ([`CGROUP_MAX`]: `max`).
    pub pids_max: Option<u64>,
}

/// A cgroup limit of `max`: none.
pub const CGROUP_MAX: u64 = u64::MAX;

/// The period of `cpu.max`: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

impl CgroupLimits {
    /// `(controller, file, value)` for each limit set: what is written into the app's cgroup.
    pub fn files(&self) -> Vec<(&'static str, &'static str, String)> {
        let show = |v: u64| {
            if v == CGROUP_MAX {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        let mut out = Vec::new();
        if let Some(m) = self.memory_max {
            out.push(("memory", "memory.max", show(m)));
        }
        if let Some(c) = self.cpu_max {
            out.push(("cpu", "cpu.max", format!("{} {CPU_PERIOD_US}", show(c))));
        }
        if let Some(p) = self.pids_max {
            out.push(("pids", "pids.max", show(p)));
        }
        out
    }
}

/// A worker's user, resolved when the file is read (the forked child may not look it up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Its login name (`USER`, `LOGNAME`); `None` for a uid the password database lacks.
    pub name: Option<String>,
    /// User id.
    pub uid: u32,
    /// Group id: `group`, else the user's primary group.
    pub gid: u32,
    /// Every group it is in, `gid` first (`initgroups`).
    pub groups: Vec<u32>,
    /// Its home directory (`HOME`).
    pub home: PathBuf,
    /// Whether the worker's credentials change (`setgroups`, `setgid`, `setuid`): a root
    /// supervisor's workers; `false` when the supervisor already is this user.
    pub switch: bool,
}

impl RunAs {
    /// `nobody` (65534) as the password database of most systems has it, for tests; `switch` as
    /// a root supervisor (`true`) or one running as nobody (`false`) would have it.
    #[cfg(test)]
    pub fn nobody(switch: bool) -> RunAs {
        RunAs {
            name: Some("nobody".into()),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            home: "/nonexistent".into(),
            switch,
        }
    }

    /// `HOME`, `USER` and `LOGNAME` of this user (as systemd's `User=` sets them).
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![("HOME", self.home.display().to_string())];
        if let Some(name) = &self.name {
            vars.push(("USER", name.clone()));
            vars.push(("LOGNAME", name.clone()));
        }
        vars
    }

    /// `nobody (uid 65534)`.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// A resource `[app.rlimits]` may limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitResource {
    /// Open files (`RLIMIT_NOFILE`).
    Nofile,
    /// Processes of the user (`RLIMIT_NPROC`).
    Nproc,
    /// Core dump size in bytes (`RLIMIT_CORE`).
    Core,
    /// Locked memory in bytes (`RLIMIT_MEMLOCK`).
    Memlock,
    /// Stack size in bytes (`RLIMIT_STACK`).
    Stack,
}

impl RlimitResource {
    /// Its key in `[app.rlimits]`.
    pub fn key(self) -> &'static str {
        match self {
            RlimitResource::Nofile => "nofile",
            RlimitResource::Nproc => "nproc",
            RlimitResource::Core => "core",
            RlimitResource::Memlock => "memlock",
            RlimitResource::Stack => "stack",
        }
    }

    /// Its C name (`RLIMIT_NOFILE`).
    pub fn name(self) -> &'static str {
        match self {
            RlimitResource::Nofile => "RLIMIT_NOFILE",
            RlimitResource::Nproc => "RLIMIT_NPROC",
            RlimitResource::Core => "RLIMIT_CORE",
            RlimitResource::Memlock => "RLIMIT_MEMLOCK",
            RlimitResource::Stack => "RLIMIT_STACK",
        }
    }

    /// Its number for `setrlimit`.
    pub fn number(self) -> libc::__rlimit_resource_t {
        match self {
            RlimitResource::Nofile => libc::RLIMIT_NOFILE,
            RlimitResource::Nproc => libc::RLIMIT_NPROC,
            RlimitResource::Core => libc::RLIMIT_CORE,
            RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
            RlimitResource::Stack => libc::RLIMIT_STACK,
        }
    }
}

/// One limit: soft and hard, [`RLIM_INFINITY`] for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// What it limits.
    pub resource: RlimitResource,
    /// The soft limit (what the worker gets; it may raise it up to `hard`).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// No limit (`"infinity"`, `"unlimited"`).
pub const RLIM_INFINITY: u64 = libc::RLIM_INFINITY;

/// PM2's app contract, for an app written for PM2 (Node): how it is told to stop and how it
/// says it is ready, beyond the worker protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppContract {
    /// The signal that asks a worker to drain (`kill_signal`; PM2's key).
    pub kill_signal: StopSignal,
    /// Ready when the app calls `process.send('ready')`, not when it listens (`wait_ready`).
    pub wait_ready: bool,
    /// The app also gets the `'shutdown'` message (`process.on('message')`) when it must drain
    /// (`shutdown_with_message`).
    pub shutdown_with_message: bool,
}

/// The signal that asks a worker to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGTERM, the default (systemd, Docker, Kubernetes).
    #[default]
    Term,
    /// SIGINT, what PM2 sends.
    Int,
    /// SIGQUIT.
    Quit,
    /// SIGHUP.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl StopSignal {
    /// Every accepted signal, by name.
    pub const ALL: [StopSignal; 6] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Quit,
        StopSignal::Hup,
        StopSignal::Usr1,
        StopSignal::Usr2,
    ];

    /// Its name, as Node and `kill -l` spell it.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }

    /// Its number.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Term => libc::SIGTERM,
            StopSignal::Int => libc::SIGINT,
            StopSignal::Quit => libc::SIGQUIT,
            StopSignal::Hup => libc::SIGHUP,
            StopSignal::Usr1 => libc::SIGUSR1,
            StopSignal::Usr2 => libc::SIGUSR2,
        }
    }

    /// `SIGINT`, `sigint` or `INT`.
    pub fn parse(text: &str) -> Option<StopSignal> {
        let upper = text.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        StopSignal::ALL.into_iter().find(|s| &s.name()[3..] == name)
    }
}

/// When and how fast crashed workers are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A worker that ran at least this long before exiting was stable: restart at once.
    pub min_uptime: Duration,
    /// More unstable restarts than this within `window` mark the slot as crash-looping.
    pub max_restarts: u32,
    /// The window for `max_restarts`.
    pub window: Duration,
    /// First backoff delay after an unstable exit; doubles each time.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
}

impl RestartPolicy {
    /// Delay before the restart that follows `consecutive` unstable exits in a row (1-based).
    pub fn backoff(&self, consecutive: u32) -> Duration {
        if consecutive == 0 {
            return Duration::ZERO;
        }
        let shift = (consecutive - 1).min(30);
        self.backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }
}

/// How a rolling reload proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadPolicy {
    /// How many new workers may be starting at once.
    pub max_surge: usize,
    /// How many slots may be without a ready worker during the reload.
    pub max_unavailable: usize,
    /// Every reload is a canary reload: one slot is replaced, then the reload holds this long
    /// and continues by itself if that worker neither exited nor missed its watchdog (it is
    /// rolled back if it did). `None`: reloads roll every slot, unless `reload --canary`.
    pub canary_hold: Option<Duration>,
}

/// When a worker is replaced for using too much memory (like PM2's `max_memory_restart`, but
/// gracefully: the replacement is started and ready before the worker is drained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Resident memory of a worker's whole process group above which it is replaced; `None`:
    /// never.
    pub max_bytes: Option<u64>,
    /// How long a worker must stay above `max_bytes` before it is replaced.
    pub grace: Duration,
}

/// When a worker is replaced for its age (gunicorn's `max_requests` idea, by time): gracefully,
/// one at a time per app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgePolicy {
    /// A worker older than this (plus its share of the jitter) is replaced; `None`: never.
    pub max_age: Option<Duration>,
    /// Each worker's age limit is `max_age` plus a part of this that depends on the worker, so
    /// that workers started together are not all replaced at once.
    pub jitter: Duration,
}

impl AgePolicy {
    /// The age at which the worker `id` is due: `max_age` plus its own share of the jitter (a
    /// hash of its id, so the same worker always gets the same share).
    pub fn limit_for(&self, id: u64) -> Option<Duration> {
        let max = self.max_age?;
        let jitter = self.jitter.as_millis() as u64;
        if jitter == 0 {
            return Some(max);
        }
        // SplitMix64's finaliser: ids that differ by one land far apart.
        let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Some(max + Duration::from_millis(z % (jitter + 1)))
    }
}

/// A cluster-once cron job the supervisor runs itself (`[[job]]`): each tick once across every
/// supervisor sharing the cron backend, under cronlock's claim, lease and fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The config key it came from (`job[0]`).
    pub key: String,
    /// Name, schedule, timezone, lease and policies, as cronlock takes them.
    pub spec: cronlock::JobSpec,
    /// A run still going after this long is stopped and recorded `failed`.
    pub timeout: Duration,
    /// How long a command may take to exit after SIGTERM (timeout, supervisor stop) before its
    /// process group is killed.
    pub kill_timeout: Duration,
    /// What a run does.
    pub action: JobAction,
}

/// What one run of a `[[job]]` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobAction {
    /// Run a program as a child of the supervisor, in its own process group.
    Command {
        /// Absolute path of the program.
        program: PathBuf,
        /// Arguments after the program name.
        args: Vec<String>,
        /// Extra environment (the app's `env` when the job names an app).
        env: BTreeMap<String, String>,
        /// Working directory (the app's `cwd`, else the config file's directory).
        cwd: PathBuf,
        /// The app whose environment and directory it takes, if any.
        app: Option<String>,
        /// That app's user and limits (not its cgroup): a job of an app runs as the app does.
        confine: Box<Confinement>,
    },
    /// Send a request to an app through its own first listener.
    Http {
        /// Request method (`POST`).
        method: String,
        /// Request path and query (`/tasks/report`).
        path: String,
        /// The app whose first listener receives it.
        app: String,
    },
}

impl JobAction {
    /// `command` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            JobAction::Command { .. } => "command",
            JobAction::Http { .. } => "http",
        }
    }
}

/// Default `[[job]] timeout`.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `[[job]] kill_timeout` of a job that names no app.
pub const DEFAULT_JOB_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `[[job]] misfire_grace` with `misfire = "run_late"`.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// The most workers an app may run, from the file or from `supervisor scale`: far above what
/// one host serves, low enough that a typo cannot fork-storm the host or exhaust the
/// supervisor's memory.
pub const MAX_INSTANCES: usize = 1024;

/// The default `lease_ttl` of a cluster singleton.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// What starts a rolling reload of one app by itself (PM2's `watch` and `cron_restart`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadTriggers {
    /// `watch`: a change to a file under these paths reloads the app.
    pub watch: Option<WatchPolicy>,
    /// `cron_restart`: the app is reloaded at every occurrence of this schedule.
    pub cron_restart: Option<CronRestart>,
}

/// `watch`, `ignore_watch`, `watch_delay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPolicy {
    /// The app's directory: what relative paths and `ignore_watch` patterns are relative to.
    pub root: PathBuf,
    /// What is watched (absolute; directories are watched with everything under them).
    pub paths: Vec<PathBuf>,
    /// Glob patterns of paths that never trigger a reload (beside `node_modules`, `*.log` and
    /// paths starting with a dot, always ignored): a pattern without `/` matches any one component of
    /// the path (`*.log`, `tmp`), one with `/` the whole path relative to `root` (`public/**`).
    pub ignore: Vec<String>,
    /// How long the files must stay unchanged before the reload starts (a checkout or a build
    /// writing many files makes one reload).
    pub delay: Duration,
}

/// The default `watch_delay`.
pub const DEFAULT_WATCH_DELAY: Duration = Duration::from_millis(500);

/// `cron_restart`: a schedule, in the host's timezone (as PM2 reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronRestart {
    /// The expression as written (5, 6 or 7 fields, or a nickname such as `@daily`).
    pub expr: String,
    /// The IANA timezone it is read in.
    pub timezone: String,
}

impl CronRestart {
    /// The schedule (the validator checked that it parses).
    pub fn schedule(&self) -> Option<cronlock::Schedule> {
        let tz = cronlock::parse_timezone("cron_restart", &self.timezone).ok()?;
        cronlock::Schedule::parse_for("cron_restart", &self.expr, tz).ok()
    }
}
/// Default `log_max_size`.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1000 * 1000;
/// Default `log_retain`.
pub const DEFAULT_LOG_RETAIN: usize = 5;
/// Default `log_rate_lines` (per worker, per second).
pub const DEFAULT_LOG_RATE_LINES: u64 = 20_000;
/// Default `log_rate_bytes` (per worker, per second).
pub const DEFAULT_LOG_RATE_BYTES: u64 = 8 * 1024 * 1024;
