//! Backpressure, per worker stream: how much of one stream's output may wait for the writer
//! thread. Past [`HIGH`], the stream's reader stops reading its pipe until the writer has taken
//! it down to [`LOW`]: the pipe fills and the worker blocks in `write()`, as it would writing to
//! a slow terminal (Docker's default `blocking` log mode), instead of its lines being dropped.
//! Every other stream has a budget of its own, so a flood holds up its own worker only, and a
//! quiet worker's line waits behind at most [`HIGH`] of each flooding stream's output. The
//! event loop never waits: a reader over budget is a task that awaits ([`Budget::room`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The cost of a line waiting for the writer: its text, plus what handling a line costs
/// anyway (so that a flood of empty lines is bounded too).
pub fn cost(text_len: usize) -> usize {
    text_len + 64
}

/// Past this much waiting, the stream's reader stops reading (about 3,500 short lines: a few
/// milliseconds of the writer's work).
pub const HIGH: usize = 256 * 1024;
/// ... and reads again once the writer has taken it down to this.
pub const LOW: usize = HIGH / 2;

/// One stream's output waiting for the writer.
#[derive(Debug, Default)]
pub struct Budget {
    waiting: AtomicUsize,
    room: Notify,
}

impl Budget {
    /// A line of `cost` is queued (the reader side).
    pub fn take(&self, cost: usize) {
        self.waiting.fetch_add(cost, Ordering::AcqRel);
    }

    /// A line of `cost` was written, or dropped (the writer side): wakes the reader when that
    /// brings the stream down to [`LOW`].
    pub fn give(&self, cost: usize) {
        let before = self.waiting.fetch_sub(cost, Ordering::AcqRel);
        if before > LOW && before - cost <= LOW {
            // A permit is kept if the reader is not waiting yet: it cannot miss it.
            self.room.notify_one();
        }
    }

    /// What waits for the writer now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Returns at once under [`HIGH`]; else once the writer has taken the stream down to
    /// [`LOW`].
    pub async fn room(&self) {
        if self.waiting() <= HIGH {
            return;
        }
        while self.waiting() > LOW {
            self.room.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn room_at_once_under_high() {
        let b = Budget::default();
        b.take(HIGH);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), b.room())
                .await
                .unwrap_or_else(|_| panic!("waited under HIGH"));
        });
    }

    #[test]
    fn over_high_waits_until_the_writer_reaches_low() {
        let b = Arc::new(Budget::default());
        b.take(HIGH + 100);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let waiting = tokio::time::timeout(Duration::from_millis(50), b.room()).await;
            assert!(waiting.is_err(), "over HIGH: no room");
            // The writer, on a thread of its own, gives back line by line.
            let writer = {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..(HIGH + 100) / 1000 {
                        b.give(1000);
                        std::thread::sleep(Duration::from_micros(20));
                    }
                })
            };
            tokio::time::timeout(Duration::from_secs(10), b.room())
                .await
                .unwrap_or_else(|_| panic!("no wake-up at LOW"));
            assert!(b.waiting() <= LOW);
            let _ = writer.join();
        });
    }
}
