//! Durations and sizes in the units that show them (`3 ms`, `1.5s`, `2m 3s`; `4.2 MB`,
//! `512 MiB`), for log lines, error messages and the CLI's tables alike.

/// `1h 2m`, `3m 4s`, `5.2s`, `170 ms`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 1.0 {
        format!("{} ms", (s * 1000.0).round() as u64)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86400.0 {
        format!("{}h {}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    } else {
        format!(
            "{}d {}h",
            (s / 86400.0) as u64,
            ((s % 86400.0) / 3600.0) as u64
        )
    }
}

/// A configured or measured span for messages: `3 ms`, `250 ms`, `1s`, `1.5s`, `2m 3s`.
pub fn span(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if (1000..60_000).contains(&ms) && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        duration(d.as_secs_f64())
    }
}

/// `4.2 MB`.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// A configured size in the unit it was most likely written in: `512 MB`, `1 GiB`, `300 kB`, or
/// like [`bytes`] when no unit divides it.
pub fn size(b: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1000, "kB"),
    ];
    match UNITS.iter().find(|(u, _)| b >= *u && b.is_multiple_of(*u)) {
        Some((u, name)) => format!("{} {name}", b / u),
        None => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_units() {
        assert_eq!(duration(0.003), "3 ms");
        assert_eq!(duration(5.25), "5.2s");
        assert_eq!(duration(125.0), "2m 5s");
        assert_eq!(duration(7260.0), "2h 1m");
        assert_eq!(span(std::time::Duration::from_secs(3)), "3s");
        assert_eq!(bytes(4_200_000), "4.2 MB");
        assert_eq!(size(512_000_000), "512 MB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(300 << 20), "300 MiB");
        assert_eq!(size(30_000_000), "30 MB");
        assert_eq!(size(1001), "1001 B");
    }
}
