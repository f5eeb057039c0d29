//! PM2's values as the config writes them: milliseconds as durations, PM2's memory sizes,
//! argument strings split like a shell, the interpreter a script's extension picks.

use std::path::Path;

use serde_json::Value;

/// The interpreter PM2 picks for a script by its extension.
pub(super) fn interpreter_for(script: &str) -> &'static str {
    let ext = Path::new(script)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "js" | "cjs" | "mjs" => "node",
        "py" => "python3",
        "sh" => "bash",
        "rb" => "ruby",
        "php" => "php",
        "pl" => "perl",
        _ => "none",
    }
}

/// A name in the characters an app's name may have (another character becomes `-`, a leading
/// `-` or `_` goes, at most 64 of them; `app` when nothing is left): for `import`'s names and
/// `start app.js`'s.
pub(in crate::cli) fn clean_name(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let clean = clean.trim_start_matches(['-', '_']);
    if clean.is_empty() {
        "app".into()
    } else {
        clean.to_owned()
    }
}

/// PM2's milliseconds (a number, or a string with or without a unit) as a duration the file
/// takes (`5s`, `1500ms`).
pub(super) fn duration(v: &Value) -> Option<String> {
    let ms = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                n
            } else {
                return humantime::parse_duration(s)
                    .ok()
                    .map(|d| format_ms(d.as_millis() as u64));
            }
        }
        _ => return None,
    };
    (ms >= 0.0 && ms.is_finite()).then(|| format_ms(ms.round() as u64))
}

fn format_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// PM2's `max_memory_restart` (`300M`, `1G`, `512K`, bytes; powers of 1024) as a size.
pub(super) fn size(v: &Value) -> Option<String> {
    let text = match v {
        Value::Number(n) => return Some(format!("{}B", n.as_u64()?)),
        Value::String(s) => s.trim().to_ascii_uppercase(),
        _ => return None,
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit.trim().trim_end_matches('B') {
        "" => "B",
        "K" => "KiB",
        "M" => "MiB",
        "G" => "GiB",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

/// Whether an `ignore_watch` string is a regular expression rather than a glob.
pub(super) fn looks_like_regex(s: &str) -> bool {
    s.contains(['\\', '^', '$', '(', '|', '+'])
}

/// Splits an argument string like a shell: on whitespace, with '...' and "..." kept together.
pub(super) fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}
