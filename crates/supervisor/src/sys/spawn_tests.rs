//! [`super::Confine`] in a real child: limits always, another user only as root.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use super::{Confine, Creds, Exec, SpawnError, spawn_plain};

/// Runs `script` with `confine`; its exit status and output.
fn run(script: &str, confine: Confine, cwd: &Path) -> Result<(i32, String), SpawnError> {
    use std::io::Read;
    let args = vec!["-c".to_string(), script.to_string()];
    let child = spawn_plain(Exec {
        program: Path::new("/bin/sh"),
        args: &args,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd,
        listeners: vec![],
        confine,
    })?;
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out-parameter.
    unsafe { libc::waitpid(child.pid, &mut status, 0) };
    let mut out = String::new();
    std::fs::File::from(child.stdout)
        .read_to_string(&mut out)
        .unwrap();
    Ok((status, out))
}

fn root() -> bool {
    crate::users::effective().0 == 0
}

#[test]
fn limits_are_set_before_exec() {
    let (_, hard) = crate::users::rlimit(libc::RLIMIT_NOFILE).unwrap();
    let soft = 100.min(hard);
    let confine = Confine {
        rlimits: vec![
            ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, soft, hard),
            ("RLIMIT_CORE", libc::RLIMIT_CORE, 0, 0),
        ],
        creds: None,
        cgroup: None,
    };
    let (status, out) = run("ulimit -Sn; ulimit -Sc", confine, Path::new("/")).unwrap();
    assert_eq!(status, 0, "{out}");
    assert_eq!(out, format!("{soft}\n0\n"));
}

#[test]
fn a_limit_that_cannot_be_set_is_named() {
    let confine = Confine {
        // soft above hard: EINVAL for anyone
        rlimits: vec![("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, 20, 10)],
        creds: None,
        cgroup: None,
    };
    let e = run("true", confine, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot start /bin/sh: setrlimit(RLIMIT_NOFILE, soft 20, hard 10) failed"),
        "{e}"
    );
}

#[test]
fn a_missing_directory_is_named() {
    let e = run("true", Confine::default(), Path::new("/nonexistent/dir"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chdir(/nonexistent/dir) failed"), "{e}");
}

#[test]
fn the_child_becomes_the_user_with_its_groups() {
    if !root() {
        eprintln!("skipped: needs root to change user");
        return;
    }
    let creds = Creds {
        uid: 65534,
        gid: 65534,
        groups: vec![65534, 4242],
    };
    let confine = Confine {
        rlimits: vec![],
        creds: Some(creds),
        cgroup: None,
    };
    let (status, out) = run(
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status; cat /proc/self/status | grep -c PPid",
        confine,
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("Uid:\t65534\t65534\t65534\t65534"), "{out}");
    assert!(out.contains("Gid:\t65534\t65534\t65534\t65534"), "{out}");
    assert!(out.contains("Groups:\t4242 65534"), "{out}");
}

#[test]
fn a_user_change_that_fails_is_named() {
    if root() {
        return; // root may become anyone
    }
    let confine = Confine {
        rlimits: vec![],
        creds: Some(Creds {
            uid: 0,
            gid: 0,
            groups: vec![0],
        }),
        cgroup: None,
    };
    let e = run("true", confine, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("setgroups([0]) failed"), "{e}");
}
