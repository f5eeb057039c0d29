//! Fixtures for the core's tests: an app's settings with short, round timeouts, and [`Sim`], the
//! shell simulated with plain instants and no processes.

#![allow(clippy::expect_used)] // tests: a failed expectation is a failed test

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::app::App;
use super::report::ReloadReport;
use super::{
    Action, Answer, AppId, AppRead, AppSettings, Core, Event, ExitStatus, FileRead, ReplyTo,
    ServiceState, Signal, SocketSet, TimerKey, WorkerId, WorkerState,
};
use crate::config::{MemoryPolicy, Readiness, ReloadPolicy, RestartPolicy, Runtime, WorkerSpec};

/// App `name` with `instances` workers: ready timeout 5 s, kill timeout 10 s, backoff 100 ms
/// doubling to 2 s, crash loop above 3 restarts in 60 s, reload with `surge` and `unavailable`,
/// no `max_memory` (grace 30 s once one is set).
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
            cron_backend: false,
            contract: Default::default(),
            watchdog: None,
            confine: Default::default(),
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
            canary_hold: None,
        },
        memory: MemoryPolicy {
            max_bytes: None,
            grace: Duration::from_secs(30),
        },
        age: Default::default(),
        not_ready_hint: None,
        singleton: None,
        sockets: super::SocketSet(0),
        balance: Default::default(),
    }
}

/// The shell, simulated, around a whole [`Core`]: spawns succeed with fresh pids (unless
/// `fail_app` says which app's fail), config reads return `config`, memory samples return
/// `memory`, deadlines fire when time is advanced past them, and everything the core asks for is
/// recorded.
pub struct Sim {
    /// The core under test.
    pub core: Core,
    /// The current instant.
    pub now: Instant,
    next_pid: i32,
    /// Spawns of this app fail (`execve` would).
    pub fail_app: Option<AppId>,
    /// What a config read returns: every app's settings (each `after` the apps
    /// [`Sim::after`] says), or why the file is not valid.
    pub config: Result<Vec<AppSettings>, String>,
    /// The apps (by name) each app of [`Sim::config`] is `after` (the ones it started with).
    pub after: BTreeMap<String, Vec<String>>,
    /// What a config read returns instead of [`Sim::config`], when set.
    pub file: Option<Result<FileRead, String>>,
    /// Config reads asked for.
    pub reads: usize,
    /// Sets of sockets closed, in order.
    pub closed: Vec<SocketSet>,
    /// Routes of apps with a socket per slot, in order.
    pub routes: Vec<(SocketSet, super::Route)>,
    /// Lease tasks started (apps added or started again).
    pub watched: Vec<AppId>,
    /// What the core said it applied of the file read (`None`: all of it).
    pub applied: Vec<Option<String>>,
    /// What a memory sample returns: bytes per worker (workers not listed are left out, as
    /// ones whose process group could not be read).
    pub memory: BTreeMap<WorkerId, u64>,
    /// Memory samples taken.
    pub memory_samples: usize,
    /// Armed deadlines.
    pub timers: BTreeMap<TimerKey, Instant>,
    /// Signals sent, in order.
    pub signals: Vec<(WorkerId, Signal)>,
    /// Spawns asked for, in order.
    pub spawned: Vec<(AppId, WorkerId)>,
    /// Answers, per client.
    pub replies: HashMap<ReplyTo, Vec<Answer>>,
    /// How the supervisor exited, once it did.
    pub exit: Option<Result<(), String>>,
    /// Every app's reload that ended, in order, as the shell records them.
    pub ended: Vec<ReloadReport>,
    /// Every [`Action::Service`], in order.
    pub service: Vec<(ServiceState, String)>,
    /// The fencing token each spawned worker got.
    pub tokens: BTreeMap<WorkerId, Option<u64>>,
    /// Lease releases asked for, with the number of live workers of all apps at that moment.
    pub released: Vec<(AppId, usize)>,
}

impl Sim {
    /// Not started yet: send [`Event::Start`].
    pub fn new(apps: Vec<(AppSettings, Vec<AppId>)>) -> Sim {
        let config = Ok(apps.iter().map(|(s, _)| s.clone()).collect());
        let name = |i: &AppId| apps.get(*i).map(|(s, _)| s.spec.name.clone());
        let after = apps
            .iter()
            .map(|(s, after)| (s.spec.name.clone(), after.iter().filter_map(name).collect()))
            .collect();
        Sim {
            core: Core::new(apps),
            now: Instant::now(),
            next_pid: 100,
            fail_app: None,
            config,
            after,
            file: None,
            reads: 0,
            closed: Vec::new(),
            routes: Vec::new(),
            watched: Vec::new(),
            applied: Vec::new(),
            memory: BTreeMap::new(),
            memory_samples: 0,
            timers: BTreeMap::new(),
            signals: Vec::new(),
            spawned: Vec::new(),
            replies: HashMap::new(),
            exit: None,
            ended: Vec::new(),
            service: Vec::new(),
            tokens: BTreeMap::new(),
            released: Vec::new(),
        }
    }

    /// Hands `event` to the core and carries out what it asks, as the shell would.
    pub fn send(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(ev) = queue.pop_front() {
            for action in self.core.handle(ev, self.now) {
                match action {
                    Action::Spawn {
                        app,
                        worker,
                        fencing_token,
                        ..
                    } => {
                        self.spawned.push((app, worker));
                        self.tokens.insert(worker, fencing_token);
                        queue.push_back(if self.fail_app == Some(app) {
                            Event::SpawnFailed {
                                worker,
                                error: "No such file or directory".into(),
                            }
                        } else {
                            self.next_pid += 1;
                            Event::Spawned {
                                worker,
                                pid: self.next_pid,
                            }
                        });
                    }
                    Action::Signal { worker, signal } => self.signals.push((worker, signal)),
                    Action::Arm { timer, at } => {
                        self.timers.insert(timer, at);
                    }
                    Action::Cancel(timer) => {
                        self.timers.remove(&timer);
                    }
                    Action::ReadConfig => {
                        self.reads += 1;
                        queue.push_back(Event::Config(self.file_read()));
                    }
                    Action::CloseSockets(set) => self.closed.push(set),
                    Action::Route { sockets, route } => self.routes.push((sockets, route)),
                    Action::WatchLease(app) => self.watched.push(app),
                    Action::ConfigApplied(app) => self.applied.push(app),
                    Action::SampleMemory => {
                        self.memory_samples += 1;
                        let samples = self.memory.iter().map(|(w, b)| (*w, *b)).collect();
                        queue.push_back(Event::Memory(samples));
                    }
                    Action::Reply { to, answer } => {
                        self.replies.entry(to).or_default().push(answer)
                    }
                    Action::ReleaseLease(app) => {
                        let live = self
                            .core
                            .apps()
                            .map(|v| v.app.snapshot(self.now).workers.len())
                            .sum();
                        self.released.push((app, live));
                    }
                    Action::Exit(outcome) => self.exit = Some(outcome),
                    Action::Service { state, status } => self.service.push((state, status)),
                    Action::ReloadEnded(report) => self.ended.push(report),
                }
            }
        }
    }

    /// What a config read returns: [`Sim::file`], else [`Sim::config`] with [`Sim::after`].
    fn file_read(&self) -> Result<FileRead, String> {
        if let Some(file) = &self.file {
            return file.clone();
        }
        let settings = self.config.clone()?;
        Ok(FileRead {
            apps: settings
                .into_iter()
                .map(|s| AppRead {
                    after: self.after.get(&s.spec.name).cloned().unwrap_or_default(),
                    name: s.spec.name.clone(),
                    settings: Ok(s),
                    changed: Vec::new(),
                })
                .collect(),
            refused: Vec::new(),
        })
    }

    /// One app, `first`, started with every worker ready; the file its reloads read has it
    /// with a new program (arguments `v2`) and `change` applied.
    pub fn running_one(first: AppSettings, change: impl FnOnce(&mut AppSettings)) -> Sim {
        let mut sim = Sim::new(vec![(first.clone(), vec![])]);
        sim.send(Event::Start);
        sim.ready_all(0);
        let mut next = first;
        let mut spec: WorkerSpec = (*next.spec).clone();
        spec.args = vec!["v2".into()];
        next.spec = Arc::new(spec);
        change(&mut next);
        sim.config = Ok(vec![next]);
        sim
    }

    /// Moves time forward by `d`, firing every deadline passed on the way, in order.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let due = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= until)
                .min_by_key(|(_, at)| **at)
                .map(|(k, at)| (*k, *at));
            let Some((key, at)) = due else { break };
            self.timers.remove(&key);
            self.now = self.now.max(at);
            self.send(Event::Timer(key));
        }
        self.now = until;
    }

    /// App `i` (by id).
    pub fn app(&self, i: AppId) -> &App {
        self.core.app(i).expect("no such app")
    }

    /// Live workers of app `app` in `state`.
    pub fn workers(&self, app: AppId, state: WorkerState) -> Vec<WorkerId> {
        self.app(app)
            .snapshot(self.now)
            .workers
            .iter()
            .filter(|(w, _)| w.state == state)
            .map(|(w, _)| w.id)
            .collect()
    }

    /// Every starting worker of app `app` says it is ready.
    pub fn ready_all(&mut self, app: AppId) {
        for id in self.workers(app, WorkerState::Starting) {
            self.send(Event::Ready(id));
        }
    }

    /// The worker exited.
    pub fn exit(&mut self, worker: WorkerId, status: ExitStatus) {
        self.send(Event::Exited { worker, status });
    }

    /// The reports a client got for its reload.
    pub fn reports(&self, reply: ReplyTo) -> Vec<ReloadReport> {
        match self.replies.get(&reply).and_then(|r| r.first()) {
            Some(Answer::Reload(reports)) => reports.clone(),
            other => panic!("no reload answer for {reply}: {other:?}"),
        }
    }

    /// The service states emitted so far, in order, each once where it repeats (a status line
    /// change alone repeats the state).
    pub fn service_states(&self) -> Vec<ServiceState> {
        let mut states: Vec<ServiceState> = self.service.iter().map(|(s, _)| *s).collect();
        states.dedup();
        states
    }

    /// The signals a worker got, in order.
    pub fn signalled(&self, id: WorkerId) -> Vec<Signal> {
        self.signals
            .iter()
            .filter(|(w, _)| *w == id)
            .map(|(_, s)| *s)
            .collect()
    }
}
