//! Worker output in files, as an operator reads it: stdout and stderr land in the app's file
//! with a timestamp, the worker and its pid (stderr without a level at WARN); rotation at a small
//! size keeps exactly `log_retain` copies; `logs --lines 100` prints the last 100; `logs -f`
//! shows a line within 100 ms of the worker printing it, also while another worker floods and is
//! rate limited (its drops counted in one line); a flood with no rate limit keeps every line, in
//! order (held back, not dropped), while another worker's lines flow; a long line never blocks
//! a worker; `flush` empties the files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::{Supervisor, bin, wait_for};

/// An app running `script` under `sh -c`, ready once executed, with `extra` keys.
fn sh_app(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n\
         instances = 1\nreadiness = \"exec\"\n{extra}\n"
    )
}

fn log_dir(s: &Supervisor) -> PathBuf {
    s.dir.path().join("logs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn stdout_of(s: &Supervisor, args: &[&str]) -> String {
    let out = s.cli(args).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn output_lands_in_files_stamped_and_rotation_keeps_exactly_retain_copies() {
    let talk = sh_app(
        "talk",
        "i=0; while [ $i -lt 300 ]; do echo out line $i; echo err line $i >&2; \
         i=$((i+1)); done; echo 'ERROR: own level' >&2; exec sleep 1000",
        "",
    );
    let rot = sh_app(
        "rot",
        "i=0; while [ $i -lt 500 ]; do echo rotating line $i; i=$((i+1)); done; \
         exec sleep 1000",
        "log_max_size = \"2KB\"\nlog_retain = 3\n",
    );
    let s = Supervisor::start(&format!("{talk}{rot}"), 2).unwrap();
    let file = log_dir(&s).join("talk.log");
    wait_for(
        Duration::from_secs(10),
        "talk's last line in its file",
        || read(&file).contains("own level").then_some(()),
    )
    .unwrap();
    let text = read(&file);
    let pid = s.ready_workers().unwrap()[0].pid;
    let tag = format!(" talk.0[{pid}] ");
    let out = text
        .lines()
        .find(|l| l.ends_with("out INFO out line 7"))
        .expect("stdout line");
    let err = text
        .lines()
        .find(|l| l.ends_with("err WARN err line 7"))
        .expect("stderr line at WARN");
    for l in [out, err] {
        assert!(l.contains(&tag), "{l}");
        // 2024-05-01T10:00:00.123Z
        let stamp = l.split(' ').next().unwrap();
        assert_eq!(stamp.len(), 24, "{l}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{l}");
    }
    assert!(text.contains("err ERROR own level"), "{text}");
    assert_eq!(text.lines().count(), 601, "every line once");

    // `logs --lines 100`: the last 100, oldest first.
    let printed = stdout_of(&s, &["logs", "talk", "--lines", "100"]);
    assert_eq!(printed.lines().count(), 100, "{printed}");
    // Oldest first (stdout and stderr are two pipes read side by side: which of two lines
    // written within a millisecond arrives first is not defined, their timestamps are ordered).
    let stamps: Vec<&str> = printed
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{printed}");
    let only_err = stdout_of(&s, &["logs", "talk.0", "--lines", "10", "--err"]);
    assert_eq!(only_err.lines().count(), 10);
    assert!(only_err.lines().all(|l| l.contains(" err ")), "{only_err}");
    let json = stdout_of(&s, &["logs", "talk", "--lines", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["worker"].as_str(), v["pid"].as_i64()),
        (Some("talk.0"), Some(pid as i64))
    );

    // Rotation at 2 KB: exactly 3 copies beside the file.
    let dir = log_dir(&s);
    let rotated = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("rot.log."))
            .collect()
    };
    wait_for(Duration::from_secs(10), "rot's last line", || {
        stdout_of(&s, &["logs", "rot", "--lines", "1"])
            .contains("rotating line 499")
            .then_some(())
    })
    .unwrap();
    wait_for(Duration::from_secs(5), "3 rotated copies", || {
        (rotated().len() == 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", rotated()));
    for n in rotated() {
        let size = std::fs::metadata(dir.join(&n)).unwrap().len();
        assert!((2000..2200).contains(&size), "{n}: {size} bytes");
    }

    // `flush` empties them.
    let (ok, text) = s.cli_text(&["flush", "talk"]).unwrap();
    assert!(ok && text.contains("talk.log"), "{text}");
    assert_eq!(read(&file), "");
    let (ok, text) = s.cli_text(&["logs", "nope"]).unwrap();
    assert!(
        !ok && text.contains("no app or worker is named \"nope\""),
        "{text}"
    );
}

/// Follows `target` with `logs -f`; every line printed, with the instant it was read.
fn follow(
    s: &Supervisor,
    target: &str,
) -> (std::process::Child, mpsc::Receiver<(Instant, String)>) {
    let mut child = Command::new(bin("supervisor"))
        .args(["logs", target, "-f", "--lines", "0", "-c"])
        .arg(&s.config)
        .env("XDG_RUNTIME_DIR", s.dir.path().join("run"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The latency of each `tick MILLIS` line: when it was read minus when the worker printed it.
fn tick_latencies(rx: &mpsc::Receiver<(Instant, String)>, n: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, line) = rx.recv_timeout(left).expect("no tick line in time");
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(ms) = line
            .rsplit_once("tick ")
            .and_then(|(_, t)| t.parse::<i64>().ok())
        {
            out.push(now - ms);
        }
    }
    out
}

/// The latencies of 10 `tick` lines through `logs -f tick`, sorted.
fn followed_tick_latencies(s: &Supervisor) -> Vec<i64> {
    let (mut child, rx) = follow(s, "tick");
    let mut lat = tick_latencies(&rx, 10);
    lat.sort_unstable();
    let _ = child.kill();
    let _ = child.wait();
    lat
}

const TICK: &str = "while :; do echo \"tick $(date +%s%3N)\"; sleep 0.1; done";

#[test]
fn follow_shows_a_line_within_100ms_even_while_another_worker_floods_and_is_limited() {
    let tick = sh_app("tick", TICK, "");
    let flood = sh_app(
        "flood",
        "exec yes 'flood line'",
        "log_rate_lines = 1000\nlog_rate_bytes = \"1MB\"\n",
    );
    // A 1 MiB line with no newline, then a short one: neither blocks the worker.
    let long = sh_app(
        "long",
        "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo after the long line; exec sleep 1000",
        "",
    );
    let s = Supervisor::start(&format!("{tick}{flood}{long}"), 3).unwrap();
    let lat = followed_tick_latencies(&s);
    assert!(
        lat[lat.len() / 2] < 100,
        "median latency over 100 ms: {lat:?} ms"
    );
    assert!(lat[lat.len() - 2] < 250, "{lat:?} ms");

    // The flood is limited, and its drops are said.
    let flood_file = log_dir(&s).join("flood.log");
    wait_for(Duration::from_secs(10), "the drop count line", || {
        read(&flood_file)
            .contains("lines dropped (rate limit")
            .then_some(())
    })
    .unwrap();
    let lines = read(&flood_file).lines().count() as f64;
    let up = s.ready_workers().unwrap().len();
    assert_eq!(up, 3);
    // About 1000 lines a second (plus a burst and the drop lines) since the start.
    let metrics_like = stdout_of(&s, &["logs", "flood", "--lines", "5"]);
    assert!(metrics_like.lines().count() == 5, "{metrics_like}");
    assert!(
        lines < 40_000.0,
        "{lines} lines: the rate limit does not hold"
    );

    wait_for(
        Duration::from_secs(10),
        "the line after the long one",
        || {
            stdout_of(&s, &["logs", "long", "--lines", "2"])
                .contains("after the long line")
                .then_some(())
        },
    )
    .unwrap();
    let long = stdout_of(&s, &["logs", "long", "--lines", "2"]);
    assert!(
        long.contains("[line longer than 16 KiB: truncated]"),
        "{long}"
    );
}

#[test]
fn a_flood_without_a_rate_limit_is_held_back_not_dropped_while_other_lines_flow() {
    // The flood's file is a FIFO nobody reads yet: the writer is stuck, as on a hung disk.
    // With no rate limit the flood must then be held back (its pipe fills, `seq` blocks in
    // write()), not dropped; once the FIFO is read, every line comes out, in order.
    const N: usize = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("flood.fifo");
    let done = tmp.path().join("flood-done");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let tick = sh_app("tick", TICK, "");
    let flood = sh_app(
        "flood",
        &format!(
            "seq 1 {N}; echo done; touch {}; exec sleep 1000",
            done.display()
        ),
        &format!(
            "log_rate_lines = 0\nlog_rate_bytes = \"1GB\"\nout_file = {:?}\n",
            fifo.display().to_string()
        ),
    );
    let s = Supervisor::start(&format!("{tick}{flood}"), 2).unwrap();
    // Another worker's lines flow meanwhile (to `logs -f`: the files wait for the writer).
    let lat = followed_tick_latencies(&s);
    assert!(
        lat[lat.len() / 2] < 100,
        "median latency over 100 ms: {lat:?} ms"
    );
    assert!(
        !done.exists(),
        "the flood was not held back: its lines went nowhere"
    );
    // Read at last: every line once, in order, and the worker gets to its end.
    let reader = std::io::BufReader::new(std::fs::File::open(&fifo).unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let last = line.ends_with(" done");
            if tx.send(line).is_err() || last {
                // Keep the FIFO open until the test ends (no EPIPE for the writer).
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 1;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the flood's lines in time");
        if line.ends_with(" done") {
            break;
        }
        let n = line.rsplit(' ').next().unwrap();
        assert_eq!(n.parse::<usize>().ok(), Some(next), "{line}");
        next += 1;
    }
    assert_eq!(next, N + 1, "every line once");
    wait_for(Duration::from_secs(10), "the flood's end", || {
        done.exists().then_some(())
    })
    .unwrap();
}
