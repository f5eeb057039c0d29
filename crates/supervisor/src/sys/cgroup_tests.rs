#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::*;

#[test]
fn the_hierarchy_and_own_cgroup_are_read() {
    let hybrid = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                  35 30 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                  36 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    assert_eq!(
        cgroup2_mount(hybrid),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let v1 = "36 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    assert_eq!(cgroup2_mount(v1), None);
    assert_eq!(
        own_path("1:cpu:/\n0::/system.slice/web.service\n").as_deref(),
        Some("/system.slice/web.service")
    );
    assert_eq!(own_path("4:memory:/x\n"), None);
}

#[test]
fn a_missing_controller_is_named_with_the_reason() {
    let h = Hierarchy {
        base: "/sys/fs/cgroup/unified".into(),
        root: true,
        controllers: vec!["hugetlb".into()],
    };
    assert_eq!(h.missing(&["hugetlb"]), None);
    let why = h.missing(&["memory", "pids"]).unwrap();
    assert!(
        why.starts_with("the memory, pids controllers are not available in /sys/fs/cgroup/unified (cgroup.controllers: hugetlb): /sys/fs/cgroup is cgroup v1"),
        "{why}"
    );
    let delegated = Hierarchy {
        base: "/sys/fs/cgroup/system.slice/web.service".into(),
        root: false,
        controllers: vec![],
    };
    let why = delegated.missing(&["cpu"]).unwrap();
    assert!(
        why.contains("cgroup.controllers: none") && why.contains("Delegate=yes"),
        "{why}"
    );
}

/// As root where cgroup v2 is writable: a worker joins its app's cgroup before exec, and
/// `cgroup.kill` ends it with the cgroup.
#[test]
fn a_child_joins_the_app_cgroup_and_dies_with_it() {
    let Ok(h) = detect() else {
        eprintln!("skipped: {}", detect().unwrap_err());
        return;
    };
    // A cgroup of this test's own, so that nothing else is touched.
    let base = h
        .base
        .join(format!("supervisor-test-{}", std::process::id()));
    std::fs::create_dir(&base).unwrap();
    let test = Hierarchy {
        base: base.clone(),
        root: false,
        controllers: vec![],
    };
    let procs = test.prepare("web", &CgroupLimits::default()).unwrap();
    let args = vec!["-c".to_string(), "sleep 30".to_string()];
    use std::os::fd::{AsRawFd, BorrowedFd};
    // Enough listeners that the child's fd layout (3..) covers the number of `procs`: the
    // child must join through a copy made before the layout is built.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: `listener` outlives the spawn.
    let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    let layout = (procs.as_raw_fd() - 2).max(1) as usize;
    let child = crate::sys::spawn::spawn_plain(crate::sys::spawn::Exec {
        program: Path::new("/bin/sh"),
        args: &args,
        env: vec![],
        cwd: Path::new("/"),
        listeners: vec![fd; layout],
        confine: crate::sys::spawn::Confine {
            cgroup: Some(procs.as_raw_fd()),
            ..Default::default()
        },
    })
    .unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.pid)).unwrap();
    let dir = test.app_dir("web");
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(cgroup.contains(&name), "{cgroup}");
    kill_and_remove(&dir, Duration::from_secs(5)).unwrap();
    let mut status = 0;
    // SAFETY: our own child, a valid out-parameter.
    unsafe { libc::waitpid(child.pid, &mut status, 0) };
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    assert!(!dir.exists());
    std::fs::remove_dir(&base).unwrap();
}

/// The supervisor's own move into its leaf, and what a later look (an upgraded binary) finds:
/// this test process (nextest runs each test in a process of its own) is moved into a test
/// cgroup's leaf and back.
#[test]
fn the_supervisor_moves_into_its_leaf_and_is_found_there_again() {
    let Ok(h) = detect() else {
        eprintln!("skipped: {}", detect().unwrap_err());
        return;
    };
    let own = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        own_path(&text).unwrap()
    };
    let me = std::process::id();
    let before = own(me);
    let base = h.base.join(format!("supervisor-claim-test-{me}"));
    std::fs::create_dir(&base).unwrap();
    let test = Hierarchy {
        base: base.clone(),
        root: false,
        controllers: vec![],
    };
    test.claim(&[]).unwrap();
    assert!(
        own(me).ends_with(&format!("supervisor-claim-test-{me}/supervisor")),
        "{}",
        own(me)
    );
    let again = detect().unwrap();
    assert_eq!(
        again.base, base,
        "found in its leaf: the apps' cgroups go beside it"
    );
    assert!(!again.root);
    // Back where it was, and nothing left.
    write(
        &h.base
            .join(before.trim_start_matches('/'))
            .join("cgroup.procs"),
        &me.to_string(),
    )
    .unwrap();
    std::fs::remove_dir(base.join(LEAF)).unwrap();
    std::fs::remove_dir(&base).unwrap();
}
