//! Readiness channels of one worker: a systemd-style `NOTIFY_SOCKET` datagram socket
//! (`READY=1`, `STOPPING=1`, `STATUS=...`, `WATCHDOG=1`, `WATCHDOG=trigger`) and an s6-style
//! notification pipe (`READY_FD`: a newline means ready; after it, lines carry the same
//! assignments as a datagram, one per line: how the Node preload sends its watchdog heartbeat and
//! `X_EVENT_LOOP_LAG_MS=`), merged into one stream of [`Notification`]s. And the other direction: what the
//! supervisor itself tells its own service manager ([`service_datagram`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::net::UnixDatagram;
use tokio::net::unix::pipe;

use crate::core::ServiceState;

/// What a worker told the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Startup finished: it serves.
    Ready,
    /// It began to shut down on its own.
    Stopping,
    /// Free-form status text (`STATUS=`).
    Status(String),
    /// `WATCHDOG=1` (alive) or `WATCHDOG=trigger` (treat me as hung).
    Watchdog {
        /// `WATCHDOG=trigger`.
        trigger: bool,
    },
    /// How late its event loop ran its last timer (`X_EVENT_LOOP_LAG_MS=`).
    EventLoopLag(std::time::Duration),
}

/// Parses one sd_notify datagram (newline-separated `KEY=VALUE` assignments).
pub fn parse_datagram(msg: &[u8]) -> Vec<Notification> {
    String::from_utf8_lossy(msg)
        .lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Notification::Ready),
            Some(("STOPPING", "1")) => Some(Notification::Stopping),
            Some(("STATUS", text)) => Some(Notification::Status(text.to_string())),
            Some(("WATCHDOG", "1")) => Some(Notification::Watchdog { trigger: false }),
            Some(("WATCHDOG", "trigger")) => Some(Notification::Watchdog { trigger: true }),
            Some(("X_EVENT_LOOP_LAG_MS", ms)) => ms
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e9)
                .map(|ms| {
                    Notification::EventLoopLag(std::time::Duration::from_secs_f64(ms / 1000.0))
                }),
            _ => None,
        })
        .collect()
}

/// The datagram for the supervisor's own `NOTIFY_SOCKET` when the core reports `state` and
/// `status` after `previous`: `READY=1` (with `MAINPID=` the first time) when it becomes ready,
/// `RELOADING=1` with `MONOTONIC_USEC=` when a reload starts, `STOPPING=1` when a stop starts,
/// and always the `STATUS=` line.
pub fn service_datagram(
    previous: Option<ServiceState>,
    state: ServiceState,
    status: &str,
    mainpid: u32,
    monotonic_usec: impl FnOnce() -> u64,
) -> String {
    let mut msg = String::new();
    if previous != Some(state) {
        match state {
            ServiceState::Ready => {
                msg.push_str("READY=1\n");
                if matches!(previous, None | Some(ServiceState::Starting)) {
                    msg.push_str(&format!("MAINPID={mainpid}\n"));
                }
            }
            ServiceState::Reloading => {
                msg.push_str(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}\n",
                    monotonic_usec()
                ));
            }
            ServiceState::Stopping => msg.push_str("STOPPING=1\n"),
            ServiceState::Starting => {}
        }
    }
    let line: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    msg.push_str(&format!("STATUS={line}"));
    msg
}

/// Both channels of one worker. Dropping it removes the socket file.
#[derive(Debug)]
pub struct Channels {
    socket: UnixDatagram,
    path: PathBuf,
    pipe: Option<pipe::Receiver>,
    /// The pipe's bytes after the last newline.
    partial: Vec<u8>,
    queued: Vec<Notification>,
}

impl Channels {
    /// Binds the datagram socket at `path` (which goes into `NOTIFY_SOCKET`).
    pub fn bind(path: &Path) -> std::io::Result<Channels> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path)?;
        Ok(Channels {
            socket,
            path: path.to_path_buf(),
            pipe: None,
            partial: Vec::new(),
            queued: Vec::new(),
        })
    }

    /// Takes over the bound datagram socket `fd` at `path` (handed over by an upgrade).
    pub fn from_inherited(path: &Path, fd: OwnedFd) -> std::io::Result<Channels> {
        let std_socket = std::os::unix::net::UnixDatagram::from(fd);
        std_socket.set_nonblocking(true)?;
        Ok(Channels {
            socket: UnixDatagram::from_std(std_socket)?,
            path: path.to_path_buf(),
            pipe: None,
            partial: Vec::new(),
            queued: Vec::new(),
        })
    }

    /// A duplicate of the datagram socket (close-on-exec), kept for an upgrade's handover.
    pub fn dup_socket(&self) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsFd;
        self.socket.as_fd().try_clone_to_owned()
    }

    /// Attaches the read end of the notification pipe once the child exists.
    pub fn attach_pipe(&mut self, fd: OwnedFd) -> std::io::Result<()> {
        self.pipe = Some(pipe::Receiver::from_owned_fd(fd)?);
        Ok(())
    }

    /// The next notification; pends forever once both channels are closed (the caller stops
    /// polling when the worker exits).
    pub async fn next(&mut self) -> Notification {
        loop {
            if !self.queued.is_empty() {
                return self.queued.remove(0);
            }
            let mut buf = [0u8; 4096];
            let mut byte = [0u8; 64];
            tokio::select! {
                r = self.socket.recv(&mut buf) => {
                    if let Ok(n) = r {
                        self.queued = parse_datagram(&buf[..n]);
                    }
                }
                r = read_pipe(&mut self.pipe, &mut byte) => match r {
                    Some(chunk) => self.queued = pipe_lines(&mut self.partial, &chunk),
                    None => self.pipe = None, // EOF or error: the exit watcher reports what follows
                },
            }
        }
    }
}

/// The notifications in the complete lines of `chunk` (after `partial`, which keeps the rest):
/// an empty line is `READY=1`, any other is parsed like a datagram. A line longer than 4 KiB is
/// dropped.
fn pipe_lines(partial: &mut Vec<u8>, chunk: &[u8]) -> Vec<Notification> {
    let mut out = Vec::new();
    for &b in chunk {
        if b != b'\n' {
            if partial.len() < 4096 {
                partial.push(b);
            }
            continue;
        }
        let line = std::mem::take(partial);
        if line.iter().all(u8::is_ascii_whitespace) {
            out.push(Notification::Ready);
        } else {
            out.extend(parse_datagram(&line));
        }
    }
    out
}

async fn read_pipe(pipe: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<Vec<u8>> {
    match pipe {
        Some(p) => match p.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buf[..n].to_vec()),
        },
        None => std::future::pending().await,
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sd_notify_assignments() {
        assert_eq!(
            parse_datagram(b"STATUS=warming up\nREADY=1\nMAINPID=12\n"),
            vec![
                Notification::Status("warming up".into()),
                Notification::Ready
            ]
        );
        assert_eq!(parse_datagram(b"STOPPING=1"), vec![Notification::Stopping]);
        assert!(parse_datagram(b"READY=0").is_empty());
    }

    #[test]
    fn service_datagrams_say_what_changed() {
        use ServiceState::*;
        let at = || 1234;
        assert_eq!(
            service_datagram(None, Starting, "starting; a: 0/2 ready", 7, at),
            "STATUS=starting; a: 0/2 ready"
        );
        assert_eq!(
            service_datagram(Some(Starting), Ready, "a: 2/2 ready", 7, at),
            "READY=1\nMAINPID=7\nSTATUS=a: 2/2 ready"
        );
        assert_eq!(
            service_datagram(Some(Ready), Ready, "a: 1/2\nready", 7, at),
            "STATUS=a: 1/2 ready"
        );
        assert_eq!(
            service_datagram(Some(Ready), Reloading, "reloading a", 7, at),
            "RELOADING=1\nMONOTONIC_USEC=1234\nSTATUS=reloading a"
        );
        assert_eq!(
            service_datagram(Some(Reloading), Ready, "a: 2/2 ready", 7, at),
            "READY=1\nSTATUS=a: 2/2 ready"
        );
        assert_eq!(
            service_datagram(Some(Ready), Stopping, "stopping", 7, at),
            "STOPPING=1\nSTATUS=stopping"
        );
    }

    #[test]
    fn watchdog_and_lag() {
        assert_eq!(
            parse_datagram(b"WATCHDOG=1\nX_EVENT_LOOP_LAG_MS=2.5"),
            vec![
                Notification::Watchdog { trigger: false },
                Notification::EventLoopLag(std::time::Duration::from_micros(2500))
            ]
        );
        assert_eq!(
            parse_datagram(b"WATCHDOG=trigger"),
            vec![Notification::Watchdog { trigger: true }]
        );
        assert!(parse_datagram(b"X_EVENT_LOOP_LAG_MS=-1\nX_EVENT_LOOP_LAG_MS=NaN").is_empty());
    }

    #[test]
    fn the_pipe_carries_ready_then_lines() {
        let mut partial = Vec::new();
        assert_eq!(
            pipe_lines(&mut partial, b"\nWATCH"),
            vec![Notification::Ready]
        );
        assert_eq!(
            pipe_lines(&mut partial, b"DOG=1\nX_EVENT_LOOP_LAG_MS=3\n"),
            vec![
                Notification::Watchdog { trigger: false },
                Notification::EventLoopLag(std::time::Duration::from_millis(3))
            ]
        );
        assert!(partial.is_empty());
    }

    #[tokio::test]
    async fn datagram_and_pipe_both_signal_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let mut ch = Channels::bind(&path).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"STATUS=hi\nREADY=1", &path).unwrap();
        assert_eq!(ch.next().await, Notification::Status("hi".into()));
        assert_eq!(ch.next().await, Notification::Ready);

        let (tx, rx) = pipe::pipe().unwrap();
        let mut ch2 = Channels::bind(&dir.path().join("m.sock")).unwrap();
        ch2.attach_pipe(rx.into_blocking_fd().unwrap()).unwrap();
        let mut tx = tx;
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"\n")
            .await
            .unwrap();
        assert_eq!(ch2.next().await, Notification::Ready);
        drop(ch2);
        assert!(!dir.path().join("m.sock").exists());
    }
}
