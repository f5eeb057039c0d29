//! The user and group databases (`getpwnam_r`, `getgrnam_r`, `getgrouplist`) and this process's
//! own credentials and limits: what the config's `user`, `group` and `[app.rlimits]` are checked
//! against. None of these calls is async-signal-safe: they run when the config is read, never in
//! a forked child (which gets the numbers). This module depends on no other of the crate: the
//! config uses it, `sys` uses the config, and [`crate::rundir`] asks it for a user's name and
//! home.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// One entry of the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Calls `f` with growing buffers while it reports `ERANGE`; `Ok(None)` when the entry does not
/// exist.
fn with_buffer<T>(
    mut f: impl FnMut(&mut [u8]) -> Result<Option<T>, i32>,
) -> std::io::Result<Option<T>> {
    let mut len = 1024;
    loop {
        let mut buf = vec![0u8; len];
        match f(&mut buf) {
            Ok(v) => return Ok(v),
            Err(libc::ERANGE) if len < 1 << 20 => len *= 4,
            Err(e) => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// The password entry that `call` filled (`rc`, `found` as `getpwnam_r` returns them).
///
/// # Safety
/// `pwd` must have been filled by a successful `getpw*_r` call whose buffer is still alive.
unsafe fn user_of(
    rc: i32,
    pwd: &libc::passwd,
    found: *mut libc::passwd,
) -> Result<Option<User>, i32> {
    if rc != 0 {
        return Err(rc);
    }
    if found.is_null() || pwd.pw_name.is_null() {
        return Ok(None);
    }
    // SAFETY: the call succeeded: the strings point into its live buffer (caller's contract).
    let (name, home) = unsafe {
        (
            CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
            if pwd.pw_dir.is_null() {
                PathBuf::from("/")
            } else {
                PathBuf::from(std::ffi::OsStr::from_bytes(
                    CStr::from_ptr(pwd.pw_dir).to_bytes(),
                ))
            },
        )
    };
    Ok(Some(User {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    }))
}

/// The user named `name`.
pub fn user_by_name(name: &str) -> std::io::Result<Option<User>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(|buf| {
        // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        // SAFETY: filled by the call above, whose buffer is alive.
        unsafe { user_of(rc, &pwd, found) }
    })
}

/// The user whose id is `uid`.
pub fn user_by_uid(uid: u32) -> std::io::Result<Option<User>> {
    with_buffer(|buf| {
        // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        // SAFETY: filled by the call above, whose buffer is alive.
        unsafe { user_of(rc, &pwd, found) }
    })
}

/// The id of the group named `name`.
pub fn group_by_name(name: &str) -> std::io::Result<Option<u32>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(|buf| {
        // SAFETY: an all-zero group is a valid value for getgrnam_r to fill.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives it.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => Ok(None),
            0 => Ok(Some(grp.gr_gid)),
            e => Err(e),
        }
    })
}

/// Every group `user` is in, `gid` first (what `initgroups(user, gid)` would set).
pub fn group_list(user: &str, gid: u32) -> std::io::Result<Vec<u32>> {
    let cname = CString::new(user).map_err(std::io::Error::other)?;
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; the name is NUL-terminated.
        let rc =
            unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            // `gid` first, each group once.
            let mut out = vec![gid];
            for g in groups {
                if !out.contains(&g) {
                    out.push(g);
                }
            }
            return Ok(out);
        }
        if count <= n || n >= 65536 {
            return Err(std::io::Error::other("getgrouplist failed"));
        }
        n = count;
    }
}

/// This process's effective user and group ids.
pub fn effective() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// This process's soft and hard limit of `resource` (`RLIM_INFINITY` for none).
pub fn rlimit(resource: libc::__rlimit_resource_t) -> std::io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid out-parameter.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// A directory (or file) that a user may not get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Where.
    pub path: PathBuf,
    /// Its mode.
    pub mode: u32,
    /// Its owner.
    pub owner: u32,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (mode {:o}, owner uid {})",
            self.path.display(),
            self.mode & 0o7777,
            self.owner
        )
    }
}

/// The first component of `path` (itself included) that user `uid`, in `groups`, may not
/// search (a directory) or execute (a file), by its mode bits; `None` when every one lets it
/// through (or cannot be read: what does not exist is someone else's error). Root passes.
pub fn blocked(path: &std::path::Path, uid: u32, groups: &[u32]) -> Option<Blocked> {
    use std::os::unix::fs::MetadataExt;
    if uid == 0 {
        return None;
    }
    let mut at = PathBuf::new();
    for part in path.components() {
        at.push(part);
        let m = std::fs::metadata(&at).ok()?;
        let bit = if m.uid() == uid {
            0o100
        } else if groups.contains(&m.gid()) {
            0o010
        } else {
            0o001
        };
        if m.mode() & bit == 0 {
            return Some(Blocked {
                path: at,
                mode: m.mode(),
                owner: m.uid(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn root_and_its_group() {
        let root = user_by_name("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user_by_uid(0).unwrap().unwrap(), root);
        assert_eq!(group_by_name("root").unwrap(), Some(0));
        assert_eq!(group_list("root", 0).unwrap()[0], 0);
        assert_eq!(user_by_name("no-such-user-here").unwrap(), None);
        assert_eq!(user_by_name("a\0b").unwrap(), None);
        assert_eq!(group_by_name("no-such-group-here").unwrap(), None);
    }

    #[test]
    fn what_a_user_cannot_get_through_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let set = |p: &std::path::Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(dir.path(), 0o711);
        set(&dir.path().join("a"), 0o750);
        let me = effective().0;
        let other = if me == 4242 { 4243 } else { 4242 };
        assert_eq!(blocked(&inner, me, &[]), None, "the owner passes");
        assert_eq!(blocked(&inner, 0, &[]), None, "root passes");
        let b = blocked(&inner, other, &[4242]).unwrap();
        assert_eq!(b.path, dir.path().join("a"));
        assert!(b.to_string().contains("/a (mode 750, owner uid"), "{b}");
        let gid = std::fs::metadata(dir.path().join("a"))
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .unwrap();
        assert_eq!(blocked(&inner, other, &[gid]), None, "its group passes");
    }

    #[test]
    fn own_limits_are_read() {
        let (soft, hard) = rlimit(libc::RLIMIT_NOFILE).unwrap();
        assert!(soft <= hard);
    }
}
