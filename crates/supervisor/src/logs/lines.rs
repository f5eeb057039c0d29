//! Line framing of a byte stream with a bound: complete lines come out whole, a line longer than
//! the bound comes out as its head, marked truncated, as soon as the bound is reached, and the
//! rest of it is skipped up to its newline. Memory stays bounded whatever the stream holds (a
//! 10 MB line with no newline included), and framing never stops: the next line comes out whole.

/// Splits bytes into lines of at most `max` bytes (see the module docs).
#[derive(Debug)]
pub struct LineFramer {
    /// The start of a line whose newline has not arrived yet (at most `max` bytes).
    partial: Vec<u8>,
    max: usize,
    /// The head of the current line was emitted truncated: skip up to its newline.
    skipping: bool,
}

impl LineFramer {
    /// A framer for lines of at most `max` bytes (`max` >= 1).
    pub fn new(max: usize) -> LineFramer {
        LineFramer {
            partial: Vec::new(),
            max: max.max(1),
            skipping: false,
        }
    }

    /// Feeds `data`: calls `emit(line, truncated)` for every line it completes (without its
    /// newline) and for the head of every line that grows past the bound.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.skipping = false;
                        data = &data[i + 1..];
                        continue;
                    }
                    None => return,
                }
            }
            let (chunk, rest, complete) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            let room = self.max - self.partial.len();
            if chunk.len() > room {
                self.partial.extend_from_slice(&chunk[..room]);
                emit(&self.partial, true);
                self.partial.clear();
                // The rest of this line is skipped; if its newline was in this chunk, it ended.
                self.skipping = !complete;
            } else if complete {
                if self.partial.is_empty() {
                    emit(chunk, false);
                } else {
                    self.partial.extend_from_slice(chunk);
                    emit(&self.partial, false);
                    self.partial.clear();
                }
            } else {
                self.partial.extend_from_slice(chunk);
            }
            data = rest;
        }
    }

    /// End of the stream: the last line, if it had no newline.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(&self.partial, false);
            self.partial.clear();
        }
        self.skipping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut f = LineFramer::new(max);
        let mut out = Vec::new();
        let mut emit = |l: &[u8], t: bool| out.push((String::from_utf8_lossy(l).into_owned(), t));
        for c in chunks {
            f.push(c, &mut emit);
        }
        f.finish(&mut emit);
        out
    }

    fn lines(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, t)| (s.to_string(), *t)).collect()
    }

    #[test]
    fn lines_come_out_whole_across_chunks() {
        assert_eq!(
            frame(16, &[b"ab", b"c\nde\n", b"f"]),
            lines(&[("abc", false), ("de", false), ("f", false)])
        );
        assert_eq!(frame(16, &[b"\n\n"]), lines(&[("", false), ("", false)]));
    }

    #[test]
    fn a_line_of_exactly_the_bound_is_whole() {
        assert_eq!(
            frame(4, &[b"abcd\nx\n"]),
            lines(&[("abcd", false), ("x", false)])
        );
    }

    #[test]
    fn an_over_long_line_is_truncated_and_the_next_ones_are_whole() {
        // Past the bound within one chunk, its newline in the same chunk.
        assert_eq!(
            frame(4, &[b"abcdefgh\nok\n"]),
            lines(&[("abcd", true), ("ok", false)])
        );
        // Past the bound across chunks, its newline much later.
        assert_eq!(
            frame(4, &[b"ab", b"cdef", b"ghij", b"kl\nok\n", b"fine\n"]),
            lines(&[("abcd", true), ("ok", false), ("fine", false)])
        );
    }

    #[test]
    fn a_huge_line_without_newline_keeps_memory_bounded() {
        let mut f = LineFramer::new(16 * 1024);
        let mut count = 0;
        let chunk = vec![b'x'; 8192];
        for _ in 0..1280 {
            // 10 MiB
            f.push(&chunk, &mut |l: &[u8], t| {
                assert!(t && l.len() == 16 * 1024);
                count += 1;
            });
            assert!(f.partial.capacity() <= 32 * 1024);
        }
        assert_eq!(count, 1, "the head once, the rest skipped");
        let mut after = Vec::new();
        f.push(b"tail\nnext\n", &mut |l: &[u8], t| {
            after.push((l.to_vec(), t))
        });
        assert_eq!(after, vec![(b"next".to_vec(), false)]);
    }

    #[test]
    fn twenty_thousand_bytes_then_a_thousand_short_lines_are_all_kept() {
        let mut data = vec![b'y'; 20_000];
        data.push(b'\n');
        for i in 0..1000 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        let mut f = LineFramer::new(16 * 1024);
        let mut got = Vec::new();
        for c in data.chunks(4096) {
            f.push(c, &mut |l: &[u8], t| got.push((l.len(), t)));
        }
        assert_eq!(got.len(), 1001);
        assert_eq!(got[0], (16 * 1024, true));
        assert!(got[1..].iter().all(|(_, t)| !t));
    }
}
