//! `demo-app` without a supervisor: it binds `--listen` itself, answers like the seed, reports
//! readiness on `READY_FD`, and drains and exits 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn runs_standalone_reports_ready_and_drains_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (reader, writer): (OwnedFd, OwnedFd) = {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) with a valid two-int array; both fds are then owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: freshly created, owned by nobody else.
        unsafe {
            (
                std::os::fd::FromRawFd::from_raw_fd(fds[0]),
                std::os::fd::FromRawFd::from_raw_fd(fds[1]),
            )
        }
    };
    let wfd = writer.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-app"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("READY_FD", wfd.to_string())
        .env("DEMO_JOBS", "off")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only clears close-on-exec on the pipe's write end (fcntl is async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(wfd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(writer);
    let mut ready = std::fs::File::from(reader);
    let mut byte = [0u8; 1];
    assert_eq!(ready.read(&mut byte).unwrap(), 1, "READY_FD got a byte");
    assert_eq!(&byte, b"\n");

    assert!(get(port, "/heavy").ends_with("The result of the CPU intensive task is 5000000\n"));
    assert!(get(port, "/").contains("worker=standalone"));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("demo-app did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_arguments_are_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo-app"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--listen \"nowhere\" is not a HOST:PORT address")
    );
}
