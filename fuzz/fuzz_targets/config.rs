//! The config loader on arbitrary bytes: an error is fine, a panic or a hang is not.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    supervisor::fuzzing::config(data);
});
