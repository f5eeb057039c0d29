//! Entry points for fuzzing the inputs others write: the config loader and the control
//! protocol's decoder. Each takes arbitrary bytes and must never panic nor hang, whatever they
//! are. Used by the stable property tests and the saved corpus (`tests/fuzz.rs`, run by the
//! normal suite) and by the coverage-guided targets in `fuzz/` (cargo-fuzz, on nightly).

use std::path::Path;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::config::Config;
use crate::control::protocol::{self, Request, Response};

/// The config loader on `data` as the text of `fuzz.toml` in the current directory (relative
/// paths in it resolve there): whether it is a valid config. An error is an answer too; only a
/// panic or a hang is a failure.
pub fn config(data: &[u8]) -> bool {
    match std::str::from_utf8(data) {
        Ok(text) => Config::from_text(Path::new("fuzz.toml"), text).is_ok(),
        // `load` reads the file as UTF-8 and says so otherwise.
        Err(_) => false,
    }
}

/// The control protocol's decoder on `data` as a byte stream: cut into frames as the server
/// cuts a client's (length prefix, at most [`protocol::MAX_REQUEST_FRAME`]) and each decoded as
/// a request, then as a client cuts the supervisor's (at most [`protocol::MAX_RESPONSE_FRAME`])
/// and each decoded as a response. Returns how many frames decoded as a message.
pub fn control(data: &[u8]) -> usize {
    let mut decoded = 0;
    decoded += frames(data, protocol::MAX_REQUEST_FRAME, |f| {
        serde_json::from_slice::<Request>(f).is_ok()
    });
    decoded += frames(data, protocol::MAX_RESPONSE_FRAME, |f| {
        serde_json::from_slice::<Response>(f).is_ok()
    });
    decoded
}

/// Cuts `data` into frames of at most `max` bytes until it ends or a frame is refused; counts
/// the frames `decode` takes.
fn frames(data: &[u8], max: usize, decode: impl Fn(&[u8]) -> bool) -> usize {
    let mut codec = protocol::codec(max);
    let mut buf = BytesMut::from(data);
    let mut n = 0;
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        n += usize::from(decode(&frame));
    }
    if let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        n += usize::from(decode(&frame));
    }
    n
}
