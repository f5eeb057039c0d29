//! The supervisor's own service manager notifications: datagrams to the `NOTIFY_SOCKET` it was
//! started with (a path, or an abstract socket written `@name`, as systemd does), and the
//! `CLOCK_MONOTONIC` reading that `RELOADING=1` carries.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send notifications, from `NOTIFY_SOCKET` as read once at start.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The variable's value, for logs.
    pub target: String,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET` in the supervisor's environment, if it is set.
    pub fn from_env() -> Option<std::io::Result<Notifier>> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        Some(Notifier::new(&value.to_string_lossy()))
    }

    /// A notifier for a socket named like `NOTIFY_SOCKET` (`/path` or `@abstract`).
    pub fn new(target: &str) -> std::io::Result<Notifier> {
        let addr = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(target)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            target: target.to_string(),
        })
    }

    /// Sends one datagram (newline-separated `KEY=VALUE` assignments). Never blocks: a full
    /// queue on the manager's side loses the message, as with `sd_notify`.
    pub fn send(&self, message: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }
}

/// The supervisor's own watchdog period, when its service manager set one (`WatchdogSec=`:
/// `WATCHDOG_USEC`, with `WATCHDOG_PID` this process or unset).
pub fn watchdog_period() -> Option<std::time::Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds (systemd's `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("supervisor-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_usec() >= a + 2_000);
    }
}
