//! The last lines of one app, in memory, bounded in lines and in bytes: what `logs --lines N`
//! answers from without touching the files.

use std::collections::VecDeque;
use std::sync::Arc;

use super::record::{Record, Stream};

/// Which lines a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only this app (`None`: every app).
    pub app: Option<String>,
    /// Only this worker (`web.0`).
    pub worker: Option<String>,
    /// Only this stream.
    pub stream: Option<Stream>,
    /// Only lines read at or after this time (Unix seconds).
    pub since: Option<f64>,
}

impl Filter {
    /// Whether `r` is wanted.
    pub fn matches(&self, r: &Record) -> bool {
        self.app.as_ref().is_none_or(|a| *a == r.tag.app)
            && self.worker.as_ref().is_none_or(|w| *w == r.tag.worker)
            && self.stream.is_none_or(|s| s == r.stream)
            && self
                .since
                .is_none_or(|t| super::record::unix_secs(r.time) >= t)
    }
}

/// A bounded ring of records.
#[derive(Debug)]
pub struct Ring {
    lines: VecDeque<Arc<Record>>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    /// Lines pushed out of the ring so far (when 0, the ring holds everything since the start).
    evicted: u64,
}

impl Ring {
    /// A ring of at most `max_lines` lines and `max_bytes` bytes of text.
    pub fn new(max_lines: usize, max_bytes: usize) -> Ring {
        Ring {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes,
            evicted: 0,
        }
    }

    /// Adds a line, pushing the oldest out past the bounds.
    pub fn push(&mut self, r: Arc<Record>) {
        self.bytes += r.text.len();
        self.lines.push_back(r);
        while self.lines.len() > self.max_lines
            || (self.bytes > self.max_bytes && self.lines.len() > 1)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.text.len();
                self.evicted += 1;
            }
        }
    }

    /// The last `n` lines `filter` wants, oldest first, and whether they are all there are
    /// (nothing was pushed out, or `n` were found).
    pub fn tail(&self, filter: &Filter, n: usize) -> (Vec<Arc<Record>>, bool) {
        let mut out: Vec<Arc<Record>> = self
            .lines
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        let complete = out.len() == n || self.evicted == 0;
        (out, complete)
    }

    /// Empties it (`flush`).
    pub fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
        self.evicted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Level, Tag};
    use super::*;
    use std::time::{Duration, SystemTime};

    fn rec(worker: &str, stream: Stream, text: &str, secs: u64) -> Arc<Record> {
        Arc::new(Record {
            seq: 0,
            tag: Arc::new(Tag {
                app: "web".into(),
                worker: worker.into(),
                pid: 1,
            }),
            stream,
            level: Level::Info,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            text: text.into(),
        })
    }

    fn texts(v: &[Arc<Record>]) -> Vec<&str> {
        v.iter().map(|r| r.text.as_str()).collect()
    }

    #[test]
    fn the_last_lines_by_worker_stream_and_time() {
        let mut ring = Ring::new(100, 1 << 20);
        for i in 0..10 {
            let (w, s) = if i % 2 == 0 {
                ("web.0", Stream::Out)
            } else {
                ("web.1", Stream::Err)
            };
            ring.push(rec(w, s, &format!("l{i}"), i));
        }
        let all = Filter::default();
        assert_eq!(texts(&ring.tail(&all, 3).0), ["l7", "l8", "l9"]);
        let (few, complete) = ring.tail(&all, 100);
        assert_eq!((few.len(), complete), (10, true));
        let one = Filter {
            worker: Some("web.1".into()),
            ..Filter::default()
        };
        assert_eq!(texts(&ring.tail(&one, 2).0), ["l7", "l9"]);
        let out = Filter {
            stream: Some(Stream::Out),
            since: Some(5.0),
            ..Filter::default()
        };
        assert_eq!(texts(&ring.tail(&out, 10).0), ["l6", "l8"]);
    }

    #[test]
    fn bounded_in_lines_and_bytes() {
        let mut ring = Ring::new(5, 1 << 20);
        for i in 0..20 {
            ring.push(rec("web.0", Stream::Out, &format!("l{i}"), i));
        }
        let (lines, complete) = ring.tail(&Filter::default(), 10);
        assert_eq!(texts(&lines), ["l15", "l16", "l17", "l18", "l19"]);
        assert!(
            !complete,
            "older lines were pushed out: the files have them"
        );
        let mut small = Ring::new(1000, 10);
        for i in 0..5 {
            small.push(rec("web.0", Stream::Out, "abcd", i));
        }
        assert_eq!(small.tail(&Filter::default(), 10).0.len(), 2);
        small.clear();
        let (left, complete) = small.tail(&Filter::default(), 10);
        assert!(left.is_empty() && complete);
    }
}
