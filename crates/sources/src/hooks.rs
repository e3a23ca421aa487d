//! Consistency hooks: commands run before and after a backup (quiesce a
//! service, `fsfreeze`, flush), each with a time limit.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, ErrorKind, Result};

/// Run `command` with `sh -c` and these extra variables; fails with its own
/// last word, or when it outlives `timeout` (it is then killed).
pub fn run_hook(which: &str, command: &str, timeout: Duration, env: &[(&str, &str)]) -> Result<()> {
    let name = format!("{which} hook {command:?}");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::of(ErrorKind::Hook, &name, format!("cannot start it: {e}")))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::of(ErrorKind::Hook, &name, e))? {
            break status;
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::of(ErrorKind::Hook, &name, format!("timed out after {}s and was killed", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    let said = crate::last_line(&text).unwrap_or("no message");
    Err(Error::of(ErrorKind::Hook, &name, format!("failed ({status}): {said}")))
}
