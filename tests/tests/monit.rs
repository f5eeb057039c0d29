//! `supervisor monit` as a person runs it: in a real pseudo-terminal (100x30, TERM=xterm) it
//! draws the app and its workers and the selected row's log lines; `+` scales the selected app
//! by one (as `status` then shows); a worker flooding the log pane never holds up the keys;
//! `q`, Ctrl-C and SIGTERM each end it with exit 0 and the terminal given back (the alternate
//! screen left, the cursor shown). With stdout piped it prints the status once and says why.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Supervisor, bin, wait_for};

/// Leaves the alternate screen (what the terminal must see last).
const LEAVE_ALT_SCREEN: &str = "\x1b[?1049l";
const ENTER_ALT_SCREEN: &str = "\x1b[?1049h";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// An app of two workers printing a numbered line every 200 ms.
const TICKER: &str = r#"
[[app]]
name = "ticker"
command = "/bin/sh"
args = ["-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
instances = 2
readiness = "exec"
"#;

/// `supervisor monit` on the slave side of a pty; the master side read by a thread into `out`
/// (every byte) and `screen` (a terminal emulator: what a person would see).
struct Monit {
    child: Child,
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Monit {
    fn start(s: &Supervisor) -> Monit {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the locals; the name buffer and termios may be
        // null; the winsize outlives the call.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened by openpty and are owned by nothing else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = Command::new(bin("supervisor"));
        cmd.args(["monit", "-c"])
            .arg(&s.config)
            .env("XDG_RUNTIME_DIR", s.dir.path().join("run"))
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec the child only calls setsid and ioctl, both
        // async-signal-safe: a session of its own whose controlling terminal is the pty (what
        // /dev/tty opens in it).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // The slave's copies are the child's alone now (they went with `cmd`): the master reads
        // EOF (EIO) once the child is gone.
        drop(cmd);
        let master = std::fs::File::from(master);
        let out = Arc::new(Mutex::new(Vec::new()));
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            30.try_into().unwrap(),
            100.try_into().unwrap(),
            0,
        )));
        let (mut reader, sink, emulator) =
            (master.try_clone().unwrap(), out.clone(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                emulator.lock().unwrap().process(&buf[..n]);
            }
        });
        Monit {
            child,
            master,
            out,
            screen,
        }
    }

    /// Everything written to the terminal so far.
    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// The screen as it is now.
    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn wait_text(&self, what: &str, timeout: Duration) {
        let found = wait_for(timeout, what, || self.text().contains(what).then_some(()));
        if found.is_err() {
            panic!("monit never showed {what:?}; it showed:\n{}", self.text());
        }
    }

    fn keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    /// Waits for the exit; kills it at the deadline (and fails).
    fn exit_code(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("monit did not exit within {timeout:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the terminal was given back: the alternate screen left after it was entered, the
    /// cursor shown again.
    fn assert_restored(&self) {
        // The reader may still be draining the last bytes.
        let _ = wait_for(Duration::from_secs(5), "the screen left", || {
            self.raw().contains(LEAVE_ALT_SCREEN).then_some(())
        });
        let raw = self.raw();
        let entered = raw
            .find(ENTER_ALT_SCREEN)
            .expect("the alternate screen entered");
        let left = raw
            .rfind(LEAVE_ALT_SCREEN)
            .expect("the alternate screen left");
        assert!(entered < left, "{raw:?}");
        assert!(
            raw[entered..].contains(SHOW_CURSOR),
            "the cursor shown again"
        );
    }
}

impl Drop for Monit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready_count(s: &Supervisor) -> usize {
    s.ready_workers().map(|w| w.len()).unwrap_or(0)
}

#[test]
fn monit_in_a_pty_shows_the_workers_and_their_logs_scales_with_plus_and_quits_with_q() {
    let s = Supervisor::start(TICKER, 2).unwrap();
    let mut m = Monit::start(&s);
    m.wait_text("apps and workers", Duration::from_secs(20));
    for what in ["ticker.0", "ticker.1", "running 2/2", "ready"] {
        m.wait_text(what, Duration::from_secs(10));
    }
    // The first row (the app) is selected: the log pane follows the app's workers.
    m.wait_text("logs ticker", Duration::from_secs(10));
    m.wait_text("out INFO tick", Duration::from_secs(10));

    // `+` scales the selected app by one, through the control socket; `-` back to two.
    for (key, from, to) in [(b"+", 2, 3), (b"-", 3, 2)] {
        m.keys(key);
        m.wait_text(
            &format!("ticker: scaled from {from} to {to} worker(s)"),
            Duration::from_secs(20),
        );
        s.wait_ready(to, Duration::from_secs(20)).unwrap();
        if to == 3 {
            m.wait_text("ticker.2", Duration::from_secs(10));
        }
    }

    // Down selects ticker.0: its own lines only.
    m.keys(b"j");
    m.wait_text("logs ticker.0", Duration::from_secs(10));

    m.keys(b"q");
    assert_eq!(m.exit_code(Duration::from_secs(10)), 0, "{}", m.text());
    m.assert_restored();
    assert_eq!(ready_count(&s), 2, "monit leaves the app as it was");
}

#[test]
fn ctrl_c_and_sigterm_end_monit_with_the_terminal_given_back() {
    let s = Supervisor::start(TICKER, 2).unwrap();
    let mut m = Monit::start(&s);
    m.wait_text("ticker.1", Duration::from_secs(20));
    // Raw mode: Ctrl-C is a key, not a signal.
    m.keys(b"\x03");
    assert_eq!(m.exit_code(Duration::from_secs(10)), 0, "{}", m.text());
    m.assert_restored();

    let mut m = Monit::start(&s);
    m.wait_text("ticker.1", Duration::from_secs(20));
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
    assert_eq!(m.exit_code(Duration::from_secs(10)), 0, "{}", m.text());
    m.assert_restored();
}

#[test]
fn without_a_terminal_monit_prints_the_status_once() {
    let s = Supervisor::start(TICKER, 2).unwrap();
    let out = s.cli(&["monit"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("app ticker  generation 1  running"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ticker.0") && stdout.contains("ticker.1"),
        "{stdout}"
    );
    assert!(!stdout.contains('\x1b'), "no escape sequence: {stdout:?}");
    assert!(stderr.contains("stdout is not a terminal"), "{stderr}");
}

#[test]
fn a_flood_in_the_log_pane_never_holds_up_the_keys() {
    // One worker printing as fast as it can (the supervisor's rate limit lets 20000 lines/s
    // through), followed by the log pane; a quiet app after it.
    let flood = r#"
[[app]]
name = "flood"
command = "/usr/bin/yes"
args = ["a flood line, as long as a chatty worker prints them"]
readiness = "exec"
instances = 1

[[app]]
name = "calm"
command = "/bin/sh"
args = ["-c", "while true; do echo calm; sleep 1; done"]
readiness = "exec"
instances = 1
"#;
    let s = Supervisor::start(flood, 2).unwrap();
    let mut m = Monit::start(&s);
    m.wait_text("logs flood", Duration::from_secs(20));
    m.wait_text("a flood line", Duration::from_secs(10));
    let mut worst = Duration::ZERO;
    for (key, title) in [
        (b"j", "logs flood.0"),
        (b"j", "logs calm "),
        (b"k", "logs flood.0"),
    ] {
        let t = Instant::now();
        m.keys(key);
        m.wait_text(title, Duration::from_secs(5));
        worst = worst.max(t.elapsed());
    }
    eprintln!("slowest key to screen under the flood: {worst:?}");
    m.keys(b"q");
    assert_eq!(m.exit_code(Duration::from_secs(10)), 0, "{}", m.text());
    m.assert_restored();
}
