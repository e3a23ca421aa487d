//! Consistency hooks: commands run before and after a backup (quiesce a
//! service, `fsfreeze`, flush), each with a time limit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::command::Program;
use crate::{Error, ErrorKind, Result};

/// Run `command` with `sh -c` and these extra variables; fails with its own
/// last word, or when it outlives `timeout` (it is then killed, with what
/// it started). Its standard error is read as it runs: a hook that says
/// much would otherwise block on the pipe and be taken for a slow one.
pub fn run_hook(which: &str, command: &str, timeout: Duration, env: &[(&str, &str)]) -> Result<()> {
    let name = format!("{which} hook {:?}", crate::command::shown_command(command));
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).envs(env.iter().copied());
    let mut hook = Program::start(&mut cmd, Stdio::null(), Stdio::null())
        .map_err(|e| Error::of(ErrorKind::Hook, &name, format!("cannot start it: {e}")))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = hook.try_wait().map_err(|e| Error::of(ErrorKind::Hook, &name, e))? {
            break status;
        }
        if started.elapsed() >= timeout {
            hook.kill();
            return Err(Error::of(ErrorKind::Hook, &name, format!("timed out after {}s and was killed", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        return Ok(());
    }
    let said = hook.said();
    let said = crate::last_line(&said).unwrap_or("no message");
    Err(Error::of(ErrorKind::Hook, &name, format!("failed ({status}): {said}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hook that says a megabyte before it fails is reported with its
    /// own last word, not left blocked on its pipe until the time limit.
    #[test]
    fn a_hook_that_says_much_fails_with_its_last_word() {
        let command = "head -c 1048576 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'quiesce: no such service' >&2; exit 3";
        let err = run_hook("pre", command, Duration::from_secs(600), &[]).unwrap_err();
        assert_eq!(err.to_string(), format!("pre hook {command:?}: failed (exit status: 3): quiesce: no such service"));
    }

    /// A hook is named without the password of a URL in it.
    #[test]
    fn a_failed_hook_is_named_without_the_password_in_it() {
        let err = run_hook("pre", "false postgres://app:pw-secret@db/shop", Duration::from_secs(60), &[]).unwrap_err();
        assert_eq!(err.to_string(), "pre hook \"false postgres://app:***@db/shop\": failed (exit status: 1): no message");
    }

    /// A hook that fails, leaving a process behind that holds its standard
    /// error, is reported when it exits, with its own last word.
    #[test]
    fn a_failed_hook_is_reported_when_it_exits_not_when_what_it_left_behind_does() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let command = format!("sleep 600 >/dev/null & echo $! > {}; echo 'quiesce: no such service' >&2; exit 3", pidfile.display());
        let err = run_hook("pre", &command, Duration::from_secs(600), &[]).unwrap_err();
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let running = crate::command::tests::runs(pid.trim());
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).output();
        assert_eq!(err.to_string(), format!("pre hook {command:?}: failed (exit status: 3): quiesce: no such service"));
        assert!(running, "the hook was reported only once sleep {} had ended", pid.trim());
    }

    /// A hook killed at its time limit takes what it started with it.
    #[test]
    fn a_hook_past_its_time_limit_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let command = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
        let err = run_hook("post", &command, Duration::from_secs(1), &[]).unwrap_err();
        assert_eq!(err.to_string(), format!("post hook {command:?}: timed out after 1s and was killed"));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(!crate::command::tests::survives(pid.trim()), "sleep {} outlived its hook", pid.trim());
    }
}
