//! Records the git commit the binary is built from (`SUPERVISOR_GIT_COMMIT`), when git and a
//! repository are there, or as given in the environment (a Docker build has no `.git`: `docker
//! build --build-arg SUPERVISOR_GIT_COMMIT=$(git rev-parse --short=12 HEAD)`); `--version` and
//! `status` show it as the build.

fn main() {
    println!("cargo:rerun-if-env-changed=SUPERVISOR_GIT_COMMIT");
    if let Ok(given) = std::env::var("SUPERVISOR_GIT_COMMIT")
        && !given.trim().is_empty()
    {
        println!("cargo:rustc-env=SUPERVISOR_GIT_COMMIT={}", given.trim());
        return;
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(commit) = commit {
        println!("cargo:rustc-env=SUPERVISOR_GIT_COMMIT={commit}");
    }
}
