//! The quantities a config file writes with a unit: durations (`"10s"`, `"500ms"`) and sizes
//! (`"512MB"`, `"1GiB"`), read into [`Duration`]s and byte counts ([`crate::units`] formats them
//! back for people).

use std::time::Duration;

use serde::Deserialize;

/// A duration written as a human string in the file ("10s", "500ms", "1m 30s").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: {e} (write e.g. \"10s\" or \"500ms\")"
                ))
            })
    }
}

/// A size in bytes written with a unit in the file: `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), e.g. "300MB", "1GiB", "1.5 GB". A value that is not one is
/// a parse error, so it is reported with the file, line and key like a bad duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ByteSize(pub(super) u64);

/// Parses a size such as "512MB" or "1GiB" into bytes (see [`ByteSize`]); the error says why.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "" => return Err("no unit".into()),
        other => return Err(format!("unknown unit {other:?}")),
    };
    let bytes = if let Some((int, frac)) = number.split_once('.') {
        let value: f64 = format!("{}.{frac}", if int.is_empty() { "0" } else { int })
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        let bytes = (value * multiplier as f64).round();
        if bytes >= u64::MAX as f64 {
            return Err("too large".into());
        }
        bytes as u64
    } else {
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        value.checked_mul(multiplier).ok_or("too large")?
    };
    if bytes == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(bytes)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"512MB\" or \"1GiB\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_size(text).map(ByteSize).map_err(|why| {
                    E::custom(format!(
                        "invalid size {text:?}: {why} (write e.g. \"512MB\" or \"1GiB\"; \
                         units B, KB, MB, GB, KiB, MiB, GiB)"
                    ))
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}
