#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use super::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn rotation(max_size: u64, max_age: Option<Duration>, retain: usize) -> Rotation {
    Rotation {
        max_size,
        max_age,
        retain,
        compress: false,
    }
}

#[test]
fn rotates_by_size_keeping_retain_copies_and_never_splits_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/supervisor.log");
    let mut log = OwnLog::open(&path, rotation(200, None, 2), None).unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for i in 0..40 {
        let line = format!("2027-01-15T08:00:00.000Z  INFO event number {i:02}\n");
        log.write(line.as_bytes(), t0 + Duration::from_millis(i))
            .unwrap();
    }
    let all = names(path.parent().unwrap());
    assert_eq!(all.len(), 3, "the file and 2 copies: {all:?}");
    assert!(all.contains(&"supervisor.log".to_string()), "{all:?}");
    for n in &all {
        let text = std::fs::read_to_string(dir.path().join("logs").join(n)).unwrap();
        assert!(text.len() < 200 + 60, "{n}: {} bytes", text.len());
        assert!(
            text.lines().all(|l| l.starts_with("2027-") && l.len() > 40),
            "whole lines: {text}"
        );
    }
    // The newest copy holds the events just before those of the current file.
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(!current.contains("number 00"), "{current}");
}

#[test]
fn rotates_by_age_before_writing_and_opens_again_after_a_move() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("supervisor.log");
    let day = Duration::from_secs(86_400);
    let mut log = OwnLog::open(&path, rotation(0, Some(day), 5), None).unwrap();
    let t0 = log.since;
    log.write(b"old event\n", t0).unwrap();
    log.write(b"new event\n", t0 + day).unwrap();
    assert_eq!(names(dir.path()).len(), 2);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new event\n");
    // An external logrotate moves it; reopening starts a new file there.
    std::fs::rename(&path, dir.path().join("moved")).unwrap();
    log.reopen_file().unwrap();
    log.write(b"after\n", t0 + day).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("moved")).unwrap(),
        "new event\n"
    );
}
