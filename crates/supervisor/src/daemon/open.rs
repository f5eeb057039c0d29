//! Everything the supervisor opens before its first worker starts, in an order that fails early
//! with nothing started: a live control socket refuses the start, and so does another live
//! supervisor of the same name (its entry in the list `supervisor ls` reads is taken and locked
//! here), then every listener is bound (or, after an upgrade, taken over from the previous
//! binary by app name), the metrics listener, the lease tasks of cluster singletons, the
//! runtime directory, the `[[job]]` scheduler, the control socket and the metrics endpoint. What
//! it returns is all the shell needs.

use std::os::fd::AsRawFd;

use tokio::sync::mpsc;

use super::leases::LeaseTasks;
use super::preflight::preflight;
use super::runtime_dir::RuntimeDir;
use super::shell::Inputs;
use super::upgrade::HandoverFds;
use super::{Command, METRICS_KEY, RunOptions, StartupError};
use crate::config::{AppConfig, Config, SingletonPolicy};
use crate::control::registry::{self, Registered};
use crate::control::server::ControlSocket;
use crate::core::{AppId, LeaseEvent};
use crate::jobs::scheduler::{self, ConfigJobs};
use crate::logs::Logs;
use crate::metrics;
use crate::orphans::OwnChildren;
use crate::sys::listeners::{self, BoundListener, ListenError};
use crate::sys::{reaper, sdnotify};
use crate::upgrade::{self, HandoverState};

/// What [`open`] bound and started.
pub(super) struct Opened {
    pub(super) config: Config,
    pub(super) listeners: Vec<Vec<BoundListener>>,
    /// Its entry in the list of running supervisors, if the runtime directory can hold one.
    pub(super) registered: Option<Registered>,
    /// The pipe `start -d` waits on for the first ready.
    pub(super) detached_ready: Option<std::fs::File>,
    /// The previous binary's state, after an upgrade.
    pub(super) resume: Option<HandoverState>,
    pub(super) service: Option<sdnotify::Notifier>,
    pub(super) runtime_dir: RuntimeDir,
    pub(super) own_children: OwnChildren,
    pub(super) jobs: ConfigJobs,
    pub(super) leases: LeaseTasks,
    pub(super) lease_events: mpsc::UnboundedReceiver<(AppId, LeaseEvent)>,
    pub(super) control: ControlSocket,
    pub(super) handover: HandoverFds,
    pub(super) inputs: Inputs,
    /// The metrics endpoint's task, if one listens.
    pub(super) metrics_server: Option<tokio::task::JoinHandle<()>>,
    /// Where the workers' output goes.
    pub(super) logs: Logs,
}

/// Opens everything for `config` (or takes it over from the previous binary), logging what
/// listens where; `commands` are the signals `main` translated.
pub(super) fn open(
    config: Config,
    commands: mpsc::Receiver<Command>,
    options: RunOptions,
) -> Result<Opened, StartupError> {
    let resume = options
        .resume_fd
        .map(upgrade::read_state_fd)
        .transpose()
        .map_err(|e| StartupError::Resume(e.to_string()))?;
    let registered = register(&config, resume.as_ref().map(|s| s.started_unix))?;
    // Read once: the workers get their own NOTIFY_SOCKET, never this one.
    let service = match sdnotify::Notifier::from_env() {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            tracing::warn!(
                "NOTIFY_SOCKET is set but unusable ({e}): no notifications to the service manager"
            );
            None
        }
        None => None,
    };
    let listen_err = |cause| StartupError::Listen {
        path: config.path.clone(),
        cause,
    };
    // A fresh start makes the checks `check` makes, in the same function, binding as it goes.
    let (bound, metrics_listener) = match &resume {
        None => {
            let fresh = preflight(&config)?;
            (fresh.listeners, fresh.metrics)
        }
        Some(state) => {
            let bound = inherited_listeners(&config, state)?;
            let metrics = match state.metrics_fd {
                // SAFETY: the metrics listener the previous binary handed over; ours alone.
                Some(fd) => Some(std::net::TcpListener::from(unsafe {
                    upgrade::inherited(fd)
                })),
                None => config
                    .metrics
                    .map(|addr| listeners::bind_own(METRICS_KEY, addr))
                    .transpose()
                    .map_err(listen_err)?,
            };
            (bound, metrics)
        }
    };
    let metrics_fd = metrics_listener.as_ref().map(AsRawFd::as_raw_fd);
    let (lease_tx, lease_events) = mpsc::unbounded_channel();
    // The apps' ids: their places in the file, or those they had before an upgrade.
    let ids: Vec<AppId> = match &resume {
        Some(state) => {
            let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
            crate::core::adopt::adopted_ids(&names, &state.core)
        }
        None => (0..config.apps.len()).collect(),
    };
    let leases = start_lease_tasks(&config, &ids, lease_tx)?;
    let runtime_dir = match &resume {
        Some(state) => RuntimeDir::adopt(state.runtime_dir.clone())?,
        None => RuntimeDir::create()?,
    };
    // The shell's own children that are not workers: the orphan sweep leaves them alone.
    let own_children = OwnChildren::default();
    // Its own tasks: the event loop never waits on the cron backend.
    let jobs = ConfigJobs::start(
        &config.cron_url,
        scheduler::prepare(&config, |name| {
            let i = config.apps.iter().position(|a| a.name == name)?;
            bound.get(i)?.first()
        }),
        own_children.clone(),
        runtime_dir.files.job_secret(),
    )
    .map_err(|cause| StartupError::Jobs {
        path: config.path.clone(),
        cause,
    })?;
    let mut control = match &resume {
        // SAFETY: the control socket the previous binary handed over; ours alone.
        Some(state) => ControlSocket::inherited(&config.control_socket, unsafe {
            upgrade::inherited(state.control_fd)
        })?,
        None => ControlSocket::bind(&config.control_socket, &config.path)?,
    };
    let control_fd = control.raw_fd().unwrap_or(-1);
    // In the background (`start -d`) the supervisor's own log does not repeat every line, and
    // it rotates.
    let own_log = std::env::var_os(crate::sys::detach::DETACHED_VAR).map(std::path::PathBuf::from);
    let echo = own_log.is_none();
    if let Some(path) = own_log.filter(|p| p.is_absolute())
        && let Err(e) = crate::logs::own::install(
            &path,
            config.log_rotation,
            crate::sys::detach::redirect_output,
        )
    {
        tracing::warn!(
            "{}: {e}: the supervisor's log is not rotated",
            path.display()
        );
    }
    let logs = Logs::start(echo).map_err(StartupError::Logs)?;
    logs.configure(config.apps.iter().map(|a| (a.name.as_str(), &a.logs)));
    let (control_tx, control_rx) = mpsc::channel(64);
    control.set_logs(logs.clone());
    control.serve(control_tx);
    let (snapshots_tx, snapshots_rx) = mpsc::channel(16);
    let metrics_server = match metrics_listener {
        Some(l) => {
            let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let task = metrics::server::spawn(l, snapshots_tx, config.cron_url.clone()).map_err(
                |cause| {
                    listen_err(ListenError::Bind {
                        key: METRICS_KEY.into(),
                        addr: local.clone(),
                        cause,
                    })
                },
            )?;
            tracing::info!("metrics on http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    for (app, listeners) in config.apps.iter().zip(&bound) {
        for l in listeners {
            tracing::info!(app = %app.name, name = %l.name, address = %l.local, "listening");
        }
    }
    let subreaper = match reaper::become_subreaper() {
        Ok(true) => "subreaper",
        Ok(false) => "pid 1",
        Err(e) => {
            tracing::warn!("cannot become child subreaper ({e}): orphans of workers go to init");
            "no"
        }
    };
    tracing::info!(
        pid = std::process::id(),
        version = %upgrade::version_line(),
        control_socket = %config.control_socket.display(),
        log_dir = %config.log_dir.display(),
        apps = config.apps.len(),
        adopts_orphans = subreaper,
        notify_socket = service.as_ref().map(|n| n.target.as_str()),
        "{}",
        if resume.is_some() {
            "supervisor upgraded in place"
        } else {
            "supervisor started"
        }
    );
    Ok(Opened {
        config,
        listeners: bound,
        registered,
        detached_ready: options.ready_fd.map(std::fs::File::from),
        resume,
        service,
        runtime_dir,
        own_children,
        jobs,
        leases,
        lease_events,
        control,
        handover: HandoverFds {
            control: control_fd,
            metrics: metrics_fd,
            log_format: options.log_format,
        },
        inputs: Inputs {
            commands,
            control: control_rx,
            snapshots: snapshots_rx,
        },
        metrics_server,
        logs,
    })
}

/// Lists the supervisor among its user's running ones (`supervisor ls`), under its name, in the
/// private runtime directory; refused while another supervisor runs under that name. A
/// runtime directory that cannot be used is said once, and the supervisor runs unlisted.
fn register(config: &Config, started: Option<f64>) -> Result<Option<Registered>, StartupError> {
    let Some(base) = crate::rundir::base() else {
        tracing::warn!(
            "no private runtime directory (XDG_RUNTIME_DIR and HOME are unset): `supervisor ls` will not list this supervisor"
        );
        return Ok(None);
    };
    if let Err(e) = crate::rundir::ensure_private(&base) {
        tracing::warn!("{e}: `supervisor ls` will not list this supervisor");
        return Ok(None);
    }
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    // Entries of supervisors that were killed are removed on the way.
    let _ = registry::list(std::slice::from_ref(&base));
    let entry = registry::Entry {
        name: config.name.clone(),
        pid: std::process::id() as i32,
        config: absolute(&config.path),
        control_socket: absolute(&config.control_socket),
        started_unix: started.unwrap_or_else(super::views::unix_now),
    };
    match registry::register(&base, &entry) {
        Ok(r) => Ok(Some(r)),
        Err(e @ registry::RegistryError::Taken { .. }) => Err(StartupError::Named(e.to_string())),
        Err(e) => {
            tracing::warn!("{e}: `supervisor ls` will not list this supervisor");
            Ok(None)
        }
    }
}

/// The listeners an upgrade handed over, for the apps of the config read again (by app name;
/// an app must have the same name as before: the preflight checked it).
fn inherited_listeners(
    config: &Config,
    state: &HandoverState,
) -> Result<Vec<Vec<BoundListener>>, StartupError> {
    config
        .apps
        .iter()
        .map(|app| {
            let fds = state
                .apps
                .iter()
                .find(|a| a.name == app.name)
                .ok_or_else(|| {
                    StartupError::Resume(format!(
                        "app {} was not handed over (a reload adds apps: upgrade after it)",
                        app.name
                    ))
                })?;
            Ok(fds
                .listeners
                .iter()
                // SAFETY: a listener the previous binary handed over; ours alone.
                .map(|l| l.take(unsafe { upgrade::inherited(l.fd) }))
                .collect())
        })
        .collect()
}

/// One lease task per cluster singleton, on the cron backend (Redis, or the local directory).
fn start_lease_tasks(
    config: &Config,
    ids: &[AppId],
    events: mpsc::UnboundedSender<(AppId, LeaseEvent)>,
) -> Result<LeaseTasks, StartupError> {
    let singletons: Vec<(AppId, &AppConfig, SingletonPolicy)> = config
        .apps
        .iter()
        .zip(ids)
        .filter_map(|(a, id)| Some((*id, a, a.singleton?)))
        .collect();
    let Some(shortest) = singletons.iter().map(|(_, _, p)| p.renew_every()).min() else {
        return Ok(LeaseTasks::new(events, None));
    };
    // Every call is bounded well inside a renewal period (the task also races each renewal
    // against its fencing deadline).
    let timeout = shortest.clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
    );
    let leases =
        cronlock::SingletonLeases::from_url(&config.cron_url, timeout).map_err(|cause| {
            StartupError::Singleton {
                url: cronlock::redact_url(&config.cron_url),
                cause,
            }
        })?;
    let leases = std::sync::Arc::new(leases);
    let me = cronlock::Contender::current();
    let mut tasks = LeaseTasks::new(
        events.clone(),
        Some((std::sync::Arc::clone(&leases), me.clone())),
    );
    for (i, app, policy) in singletons {
        tracing::info!(
            app = %app.name,
            backend = %leases.describe(),
            holder_id = %me.id,
            lease_ttl = %crate::units::span(policy.lease_ttl),
            "cluster singleton: runs on the one host that holds its lease"
        );
        tasks.spawn(
            i,
            app.name.clone(),
            policy,
            std::sync::Arc::clone(&leases),
            me.clone(),
            events.clone(),
        );
    }
    Ok(tasks)
}
