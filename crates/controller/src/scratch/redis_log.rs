//! Redis's log, read for why a redis-server exited at start.

use std::ops::RangeInclusive;

use super::last_log_line;

/// The message of a warning (`#`) in Redis's log, a line
/// `pid:role dd Mon yyyy hh:mm:ss.mmm # message`; `None` for a line at
/// another level (`.` debug, `-` verbose, `*` notice) or in another form
/// (a config file error, redis-check-rdb's report, a message's own line
/// breaks).
fn redis_warning(line: &str) -> Option<&str> {
    let number = |s: &str, len: RangeInclusive<usize>| len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = line.splitn(7, ' ');
    let [head, day, month, year, time, level] = std::array::from_fn(|_| parts.next().unwrap_or_default());
    let (pid, role) = head.split_once(':')?;
    let clock: Vec<&str> = time.split([':', '.']).collect();
    let formed = number(pid, 1..=10)
        && role.len() == 1
        && role.bytes().all(|b| b.is_ascii_uppercase())
        && number(day, 2..=2)
        && month.len() == 3
        && month.bytes().all(|b| b.is_ascii_alphabetic())
        && number(year, 4..=4)
        && clock.len() == 4
        && clock.iter().zip([2, 2, 2, 3]).all(|(part, n)| number(part, n..=n));
    (formed && level == "#").then(|| parts.next().unwrap_or_default())
}

/// Why a redis-server exited at start: the message of its log's last
/// warning (`#`), as it writes fatal errors at that level and may follow
/// one with unmarked lines (redis-check-rdb's report on a broken RDB
/// file); the last line of a log without one (an error in its
/// configuration is written unmarked).
pub(super) fn redis_reason(log: &str) -> Option<&str> {
    log.lines().rev().filter_map(redis_warning).map(str::trim).find(|message| !message.is_empty()).or_else(|| last_log_line(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redis-server 7.0.15's log on a truncated dump.rdb: its last warning
    /// names the cause, and redis-check-rdb's report follows it.
    const TRUNCATED_RDB_LOG: &str = "\
19086:C 01 Dec 2026 06:28:13.889 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo
19086:C 01 Dec 2026 06:28:13.889 # Redis version=7.0.15, bits=64, commit=00000000, modified=0, pid=19086, just started
19086:C 01 Dec 2026 06:28:13.889 # Configuration loaded
19086:M 01 Dec 2026 06:28:13.890 * monotonic clock: POSIX clock_gettime
19086:M 01 Dec 2026 06:28:13.890 * Running mode=standalone, port=59045.
19086:M 01 Dec 2026 06:28:13.890 # Server initialized
19086:M 01 Dec 2026 06:28:13.890 # WARNING Memory overcommit must be enabled! Without it, a background save or replication may fail under low memory condition. Being disabled, it can can also cause failures without low memory condition, see https://github.com/jemalloc/jemalloc/issues/1328. To fix this issue add 'vm.overcommit_memory = 1' to /etc/sysctl.conf and then reboot or run the command 'sysctl vm.overcommit_memory=1' for this to take effect.
19086:M 01 Dec 2026 06:28:13.891 # Short read or OOM loading DB. Unrecoverable error, aborting now.
19086:M 01 Dec 2026 06:28:13.891 # Internal error in RDB reading offset 0, function at rdb.c:3249 -> Unexpected EOF reading RDB file
[offset 0] Checking RDB file dump.rdb
--- RDB ERROR DETECTED ---
[offset 20] Unexpected EOF reading RDB file
[additional info] While doing: read-aux
[additional info] Reading type 0 (string)
[info] 0 keys read
[info] 0 expires
[info] 0 already expired
";

    /// Its output on a `--dir` that does not exist: no line in its log's form.
    const CONFIG_ERROR_LOG: &str = "
*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***
Reading the configuration file, at line 4
>>> 'dir \"/tmp/h2-redis/nope\"'
No such file or directory
";

    #[test]
    fn a_redis_that_exits_at_start_is_quoted_by_its_last_warning() {
        assert_eq!(
            redis_reason(TRUNCATED_RDB_LOG),
            Some("Internal error in RDB reading offset 0, function at rdb.c:3249 -> Unexpected EOF reading RDB file")
        );
        assert_eq!(redis_reason(CONFIG_ERROR_LOG), Some("No such file or directory"), "the last line, with no warning");
        assert_eq!(
            redis_reason("1:M 01 Dec 2026 06:18:08.937 # \n1:M 01 Dec 2026 06:18:08.937 * Ready\n"),
            Some("1:M 01 Dec 2026 06:18:08.937 * Ready"),
            "a warning without a message is passed over"
        );
        assert_eq!(redis_reason(" \n"), None);
    }

    #[test]
    fn only_a_well_formed_warning_line_gives_its_message() {
        // Lines 0-2 and 5-8 are warnings, 3 and 4 notices, the rest redis-check-rdb's report.
        let warnings = [0, 1, 2, 5, 6, 7, 8];
        for (i, line) in TRUNCATED_RDB_LOG.lines().enumerate() {
            // Each marked line's head, `19086:M 01 Dec 2026 06:28:13.890 # `, is 35 bytes long.
            let want = warnings.contains(&i).then(|| &line[35..]);
            assert_eq!(redis_warning(line), want, "line {i}: {line}");
        }
        assert_eq!(redis_warning(TRUNCATED_RDB_LOG.lines().nth(2).unwrap()), Some("Configuration loaded"));
        for line in CONFIG_ERROR_LOG.lines() {
            assert_eq!(redis_warning(line), None, "{line}");
        }
        assert_eq!(redis_warning("7:M 01 Dec 2026 06:28:13.889 # a # b"), Some("a # b"));
        assert_eq!(redis_warning("7:M 01 Dec 2026 06:28:13.889 #  a "), Some(" a "));
        assert_eq!(redis_warning("7:M 01 Dec 2026 06:28:13.889 # "), Some(""));
        assert_eq!(redis_warning("7:M 01 Dec 2026 06:28:13.889 #"), Some(""));
        for other in [
            "7:C 01 Dec 2026 06:28:13.889 . a # b",
            "7:S 01 Dec 2026 06:28:13.889 - a # b",
            "7:M 01 Dec 2026 06:28:13.889 * a # b",
            "[offset 0] Checking RDB file dump.rdb",
            "7:M 01 Dec 2026 06:28:13 # no milliseconds",
            "7:M 1 Dec 2026 06:28:13.889 # a",
            "x:M 01 Dec 2026 06:28:13.889 # a",
            "7:m 01 Dec 2026 06:28:13.889 # a",
            "7:M 01 Dec 2026 06:28:13.889 ! a",
            "7:M 01 Dec 2026 06:28:13.889  # a",
        ] {
            assert_eq!(redis_warning(other), None, "{other}");
        }
    }
}
