//! The control protocol's decoder on arbitrary bytes, as a client's and as the supervisor's
//! stream: an error is fine, a panic or a hang is not.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    supervisor::fuzzing::control(data);
});
