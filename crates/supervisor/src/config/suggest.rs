//! What an unknown key was probably meant to be: a near spelling of one the table takes
//! (`kill_timout`: `kill_timeout`), or the name PM2's ecosystem file gives it
//! (`max_memory_restart`: `max_memory`). Pure; applied to serde's "unknown field" message.

/// PM2's ecosystem options that are keys of another name here.
const PM2_NAMES: &[(&str, &str)] = &[
    ("script", "`command` (and `args`)"),
    ("max_memory_restart", "`max_memory`"),
    ("listen_timeout", "`ready_timeout`"),
    (
        "exec_mode",
        "nothing: every worker shares the app's sockets",
    ),
    ("restart_delay", "`[app.restart] backoff_initial`"),
    (
        "exp_backoff_restart_delay",
        "`[app.restart] backoff_initial`",
    ),
    ("min_uptime", "`[app.restart] min_uptime`"),
    ("max_restarts", "`[app.restart] max_restarts`"),
    (
        "interpreter",
        "`command` (the interpreter, the script in `args`)",
    ),
    (
        "node_args",
        "`command = \"node\"` with the flags first in `args`",
    ),
    ("uid", "`user`"),
    ("gid", "`group`"),
];

/// Keys of one table often written in another, with the table they belong to.
const OTHER_TABLE: &[(&str, &str)] = &[(
    "balance",
    "a key of `[[app]]` (it applies to every TCP listener of the app), not of this table",
)];

/// serde's "unknown field `X`, expected one of `a`, `b`" with what `X` was probably meant to be
/// put first; any other message as it is.
pub fn unknown_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let known: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    if let Some((_, table)) = OTHER_TABLE.iter().find(|(key, _)| *key == given) {
        return format!("unknown key `{given}`: `{given}` is {table}");
    }
    if let Some((_, ours)) = PM2_NAMES.iter().find(|(pm2, _)| *pm2 == given) {
        return format!("unknown key `{given}`: PM2's `{given}` is {ours} here");
    }
    match closest(given, &known) {
        // The key it was meant to be, without the list of every other.
        Some(k) => format!("unknown key `{given}`: did you mean `{k}`?"),
        None => message.to_string(),
    }
}

/// The known key nearest to `given`, if it is near enough to be a typo (at most a third of its
/// letters, and at most 3, wrong).
fn closest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let bound = (given.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (distance(given, k), *k))
        .filter(|(d, _)| *d <= bound)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance: letters inserted, removed or replaced.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERDE: &str =
        "unknown field `kill_timout`, expected one of `name`, `command`, `kill_timeout`, `env`";

    #[test]
    fn a_typo_is_named_with_the_key_it_was_meant_to_be() {
        assert_eq!(
            unknown_key(SERDE),
            "unknown key `kill_timout`: did you mean `kill_timeout`?"
        );
        assert_eq!(distance("kill_timout", "kill_timeout"), 1);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn a_key_of_another_table_says_where_it_goes() {
        let m = unknown_key("unknown field `balance`, expected one of `name`, `address`, `path`");
        assert!(m.contains("`balance` is a key of `[[app]]`"), "{m}");
    }

    #[test]
    fn pm2_names_say_what_they_are_here_and_far_words_stay_as_they_are() {
        let pm2 = unknown_key("unknown field `max_memory_restart`, expected one of `max_memory`");
        assert_eq!(
            pm2,
            "unknown key `max_memory_restart`: PM2's `max_memory_restart` is `max_memory` here"
        );
        let far = "unknown field `zzz`, expected one of `name`, `command`";
        assert_eq!(unknown_key(far), far);
        assert_eq!(unknown_key("invalid type: string"), "invalid type: string");
    }
}
