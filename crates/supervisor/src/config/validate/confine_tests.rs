#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::super::super::model::{RLIM_INFINITY as INF, RlimitResource};
use super::super::super::{Config, RunAs};
use super::super::load_app as load;
use super::{Refusal, refusal};

fn root() -> bool {
    crate::users::effective().0 == 0
}

#[test]
fn rlimits_one_value_a_pair_infinity_and_sizes() {
    let c = load(
        "[app.rlimits]\nnofile = 4096\nnproc = [100, 200]\ncore = \"unlimited\"\nstack = \"8MiB\"",
    )
    .unwrap();
    let l = &c.apps[0].worker.confine.rlimits;
    let find = |r| l.iter().find(|x| x.resource == r).map(|x| (x.soft, x.hard));
    assert_eq!(find(RlimitResource::Nofile), Some((4096, 4096)));
    assert_eq!(find(RlimitResource::Nproc), Some((100, 200)));
    assert_eq!(find(RlimitResource::Core), Some((INF, INF)));
    assert_eq!(find(RlimitResource::Stack), Some((8 << 20, 8 << 20)));
    assert_eq!(find(RlimitResource::Memlock), None);
    assert!(load("").unwrap().apps[0].worker.confine.rlimits.is_empty());
}

#[test]
fn bad_rlimits_are_named_with_their_line() {
    let e = load("[app.rlimits]\nnofile = [200, 100]").unwrap_err();
    assert!(
        e.contains(":5:")
            && e.contains("app[0].rlimits.nofile")
            && e.contains("soft limit 200 is above the hard limit 100"),
        "{e}"
    );
    let e = load("[app.rlimits]\nnofile = \"infinity\"").unwrap_err();
    assert!(e.contains("fs.nr_open"), "{e}");
    let e = load("[app.rlimits]\nnproc = -1").unwrap_err();
    assert!(
        e.contains("app[0].rlimits.nproc") && e.contains("negative"),
        "{e}"
    );
    let e = load("[app.rlimits]\nnproc = \"64MiB\"").unwrap_err();
    assert!(e.contains("write a number"), "{e}");
    let e = load("[app.rlimits]\nnproc = [1, 2, 3]").unwrap_err();
    assert!(e.contains("[soft, hard]"), "{e}");
    let e = load("[app.rlimits]\nfiles = 3").unwrap_err();
    assert!(e.contains("app[0].rlimits") && e.contains("files"), "{e}");
}

#[test]
fn above_the_own_hard_limit_only_for_root() {
    let (_, hard) = crate::users::rlimit(libc::RLIMIT_NPROC).unwrap();
    if hard == INF {
        return;
    }
    let r = load(&format!("[app.rlimits]\nnproc = {}", hard + 1));
    if root() {
        assert!(r.is_ok(), "{r:?}");
    } else {
        let e = r.unwrap_err();
        assert!(e.contains("own hard limit"), "{e}");
    }
}

#[test]
fn a_user_by_name_or_number_with_its_groups() {
    if !root() {
        return; // a non-root supervisor may only name itself: see the refusal test
    }
    let c = load("user = \"root\"").unwrap();
    let u = c.apps[0].worker.confine.user.clone().unwrap();
    assert_eq!((u.uid, u.gid, u.name.as_deref()), (0, 0, Some("root")));
    assert_eq!(u.groups[0], 0);
    assert!(u.switch);
    let c = load("user = 0\ngroup = \"root\"").unwrap();
    assert_eq!(c.apps[0].worker.confine.user.as_ref().unwrap().uid, 0);
    let c = load(
        "user = \"nobody\"\n[app.rlimits]\ncore = 0\n\n[[job]]\nname = \"j\"\n\
         schedule = \"@daily\"\napp = \"web\"\ncommand = [\"/bin/true\"]",
    )
    .unwrap();
    let u = c.apps[0].worker.confine.user.clone().unwrap();
    assert_eq!(u.name.as_deref(), Some("nobody"));
    assert_ne!(u.uid, 0);
    let crate::config::JobAction::Command { confine, .. } = &c.jobs[0].action else {
        panic!("a command job");
    };
    assert_eq!(
        **confine, c.apps[0].worker.confine,
        "a job of the app runs as the app does"
    );
    // A uid the password database lacks needs a group.
    let e = load("user = 4000123").unwrap_err();
    assert!(e.contains("set `group` too"), "{e}");
    let c = load("user = 4000123\ngroup = 4000123").unwrap();
    let u = c.apps[0].worker.confine.user.clone().unwrap();
    assert_eq!(
        (u.uid, u.gid, u.groups.clone(), u.name),
        (4000123, 4000123, vec![4000123], None)
    );
}

#[test]
fn a_cwd_or_program_the_user_cannot_reach_is_named() {
    if !root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = load(&format!(
        "user = \"nobody\"\ncwd = \"{}\"",
        private.display()
    ))
    .unwrap_err();
    assert!(
        e.contains(":4:8: app[0].user: nobody (uid")
            && e.contains(&format!("cannot enter the app's cwd {}", private.display()))
            && e.contains("(mode 700, owner uid 0) does not let it through"),
        "{e}"
    );
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o744)).unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        format!(
            "[[app]]\nname = \"web\"\ncommand = \"{}\"\ncwd = \"/\"\nuser = \"nobody\"\n",
            script.display()
        ),
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("cannot run the app's program") && e.contains("mode 744"),
        "{e}"
    );
    assert!(load("user = \"nobody\"\ncwd = \"/\"").is_ok());
}

#[test]
fn unknown_users_and_groups_are_named_with_their_line() {
    let e = load("user = \"no-such-user-here\"").unwrap_err();
    assert!(
        e.contains("s.toml:4:8: app[0].user: no user is named \"no-such-user-here\""),
        "{e}"
    );
    let e = load("group = \"root\"").unwrap_err();
    assert!(
        e.contains("app[0].group") && e.contains("needs `user`"),
        "{e}"
    );
    if root() {
        let e = load("user = \"root\"\ngroup = \"no-such-group-here\"").unwrap_err();
        assert!(e.contains(":5:9: app[0].group: no group is named"), "{e}");
    }
}

#[test]
fn a_supervisor_that_is_not_root_may_only_name_itself() {
    let nobody = RunAs::nobody(false);
    assert_eq!(refusal(&nobody, 0, 0, Some("root")), None);
    let Some(Refusal::User(why)) = refusal(&nobody, 1000, 1000, Some("ann")) else {
        panic!("refused");
    };
    assert!(
        why.contains("nobody (uid 65534) is not the user this supervisor runs as, ann (uid 1000)")
            && why.contains("started as root"),
        "{why}"
    );
    let me = RunAs {
        uid: 1000,
        gid: 1000,
        ..nobody.clone()
    };
    assert_eq!(refusal(&me, 1000, 1000, None), None);
    assert!(matches!(
        refusal(&me, 1000, 100, None),
        Some(Refusal::Group(_))
    ));
}
