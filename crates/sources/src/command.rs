//! `command:` sources: any program whose standard output is the backup
//! (`vault operator raft snapshot save /dev/stdout`, `mariadb-dump`, …).
//! A non-zero exit fails the backup with the program's own message, so a
//! partial stream is never saved as a snapshot.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tresor_engine::SourceInfo;

use crate::{Error, Result, Source, Stream};

/// A command as messages, reports and the audit trail name it: each word
/// that is a URL without its password and credential-like query values
/// (`pg_dump postgres://app:***@db/shop`).
pub fn shown_command(command: &str) -> String {
    command.split_inclusive(char::is_whitespace).map(shown_word).collect()
}

/// One word of a command, its trailing space kept.
fn shown_word(word: &str) -> String {
    let url = word.trim_end();
    format!("{}{}", tresor_storage::redact(url), &word[url.len()..])
}

/// The variables tresor reads its own secrets from: the repository's
/// password (and the file holding it), a new, a copy target's and a
/// confirming one, and the daemon's API tokens. No program tresor starts
/// needs them (a hook, a `command:` source or target, pg_dump, a drill's
/// verify command, a scratch server, a daemon's job, which is given its
/// repository in its spec), and one that logs or stores its environment
/// would give them away. The repository's location goes too: nothing
/// documents it to a hook, and without a password it is of no use there.
pub const SECRET_VARS: [&str; 11] = [
    "TRESOR_PASSWORD",
    "TRESOR_PASSWORD_FILE",
    "TRESOR_NEW_PASSWORD",
    "TRESOR_NEW_PASSWORD_FILE",
    "TRESOR_TO_PASSWORD",
    "TRESOR_TO_PASSWORD_FILE",
    "TRESOR_CONFIRM_PASSWORD",
    "TRESOR_CONFIRM_PASSWORD_FILE",
    "TRESOR_API_TOKEN",
    "TRESOR_API_READ_TOKEN",
    "TRESOR_REPOSITORY",
];

/// `cmd` without [`SECRET_VARS`] in its environment: every child tresor
/// starts goes through here.
pub fn without_secrets(cmd: &mut Command) -> &mut Command {
    for var in SECRET_VARS {
        cmd.env_remove(var);
    }
    cmd
}

pub struct CommandSource {
    command: String,
    /// The command as messages and the snapshot name it: each word that is
    /// a URL without its password (`pg_dump postgres://app:***@db/shop`).
    shown: String,
}

impl CommandSource {
    pub fn new(command: &str) -> Result<CommandSource> {
        if command.trim().is_empty() {
            return Err(Error::failed("command:", "no command given"));
        }
        let command = command.trim().to_string();
        let shown = shown_command(&command);
        Ok(CommandSource { command, shown })
    }

    fn name(&self) -> String {
        format!("command {:?}", self.shown)
    }
}

impl Source for CommandSource {
    fn open(&mut self) -> Result<Stream> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&self.command);
        Ok(Stream { name: "stdout".into(), reader: spawn_output(self.name(), cmd)? })
    }

    fn info(&self) -> SourceInfo {
        SourceInfo { kind: "command".into(), url: Some(format!("command:{}", self.shown)), ..Default::default() }
    }
}

/// A program's standard output as a stream that fails, with the program's
/// own last word, unless the program exits successfully.
pub(crate) fn spawn_output(name: String, cmd: Command) -> Result<Box<dyn Read + Send>> {
    spawn_output_and_stderr(name, cmd).map(|(out, _)| out)
}

/// What a program says on standard error, gathered as it says it.
#[derive(Clone, Default)]
pub(crate) struct Stderr(Arc<Mutex<Said>>);

#[derive(Default)]
struct Said {
    text: Vec<u8>,
    /// No more is kept: the program has exited and what it left behind
    /// may talk for ever.
    closed: bool,
}

impl Stderr {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned").text).into_owned()
    }

    fn hear(&self, words: &[u8]) {
        let mut said = self.0.lock().expect("not poisoned");
        if !said.closed {
            said.text.extend_from_slice(words);
        }
    }

    fn close(&self) {
        self.0.lock().expect("not poisoned").closed = true;
    }
}

/// [`spawn_output`], and the program's standard error, complete once the
/// output has been read to its end.
pub(crate) fn spawn_output_and_stderr(name: String, cmd: Command) -> Result<(Box<dyn Read + Send>, Stderr)> {
    spawn_output_heard(name, cmd, last_word)
}

/// [`spawn_output_and_stderr`] of a program whose failure `word` finds in
/// its standard error.
pub(crate) fn spawn_output_heard(name: String, mut cmd: Command, word: Word) -> Result<(Box<dyn Read + Send>, Stderr)> {
    let program =
        Program::start(&mut cmd, Stdio::null(), Stdio::piped()).map_err(|e| Error::failed(&name, format!("cannot start it: {e}")))?;
    let stderr = program.stderr.clone();
    Ok((Box::new(ChildOutput { name, program, reaped: false, word }), stderr))
}

/// What a program said of its failure, found in its standard error.
pub(crate) type Word = fn(&str) -> Option<String>;

/// Most programs' word: their last line.
fn last_word(text: &str) -> Option<String> {
    last_line(text).map(String::from)
}

/// How long a program's standard error is read once it has exited: what
/// it left running in the background (`daemon &`) may hold the pipe open
/// for good, and its exit must not wait on that. What is said after it is
/// read and dropped, so a leftover that talks for ever holds no memory.
const STDERR_AFTER_EXIT: Duration = Duration::from_secs(5);

/// The signals that stop a job (`tresor job run`): the daemon's SIGTERM at
/// its time limit or cancellation, and the same as the death signal it gets
/// when the daemon dies; SIGINT and SIGHUP for one run by hand.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// How many programs may run at once in one process, for [`GROUPS`].
const MOST_PROGRAMS: usize = 1024;

/// The process groups of the programs this process started and has not
/// reaped (0: a free entry). Each program leads a group of its own, so
/// neither the death signal nor a kill of the job reaches it: whoever stops
/// the job must kill these. Atomics, as a signal handler reads them.
static GROUPS: [AtomicI32; MOST_PROGRAMS] = [const { AtomicI32::new(0) }; MOST_PROGRAMS];

/// Starts under way, between the fork and the program's entry in [`GROUPS`].
static STARTING: AtomicUsize = AtomicUsize::new(0);

/// Set once a stop signal came: no program starts after it.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// From now on a [stop signal](STOP_SIGNALS) kills every program this
/// process started and has not reaped (a `command:` source or target, a
/// hook, pg_dump, …: all go through [`Program`]), with its process group,
/// and then the process, by that signal. For `tresor job run`, whose stop
/// must take what it started along, and whose programs cannot have the
/// death signal: that fires when the *thread* that started them ends, and
/// the runtime's blocking threads end when idle, however long their
/// programs run.
pub fn kill_programs_when_stopped() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only makes
    // async-signal-safe calls and reads atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // Back to the default action once run, so the raise ends the process.
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut action.sa_mask, sig);
        }
        for sig in STOP_SIGNALS {
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

extern "C" fn on_stop(sig: libc::c_int) {
    STOPPING.store(true, SeqCst);
    // A start under way enters its program before it lets a stop look (its
    // thread blocks these signals meanwhile, so it is never this one): a
    // fork and an exec, bounded all the same.
    let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
    for _ in 0..5000 {
        if STARTING.load(SeqCst) == 0 {
            break;
        }
        // SAFETY: nanosleep is async-signal-safe.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }
    for group in &GROUPS {
        let group = group.load(SeqCst);
        if group > 0 {
            // SAFETY: kill(2) is async-signal-safe; the group is one this process leads and has not reaped.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }
    // SAFETY: raise is async-signal-safe; the action is the default again.
    unsafe { libc::raise(sig) };
}

/// Spawn `cmd` as the leader of a process group of its own, entered in
/// [`GROUPS`]: its child and its entry.
fn started_registered(cmd: &mut Command) -> std::io::Result<(Child, usize)> {
    let _blocked = BlockedStops::new();
    STARTING.fetch_add(1, SeqCst);
    let _started = Decrement(&STARTING);
    if STOPPING.load(SeqCst) {
        return Err(std::io::Error::other("the job is stopping"));
    }
    let mut child = cmd.process_group(0).spawn()?;
    let group = i32::try_from(child.id()).expect("a process id");
    match GROUPS.iter().position(|g| g.compare_exchange(0, group, SeqCst, SeqCst).is_ok()) {
        Some(slot) => Ok((child, slot)),
        None => {
            // SAFETY: kill(2) on the group just started, not reaped.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            Err(std::io::Error::other(format!("more than {MOST_PROGRAMS} programs would run at once")))
        }
    }
}

/// The stop signals blocked on this thread while it lives: a stop waits
/// for the start under way, so it must not run on the starting thread.
/// The program does not inherit the mask: Rust's spawn clears it.
struct BlockedStops(libc::sigset_t);

impl BlockedStops {
    fn new() -> BlockedStops {
        // SAFETY: sigset_t is plain data, filled by sigemptyset and sigaddset.
        unsafe {
            let (mut set, mut old) = (std::mem::zeroed(), std::mem::zeroed());
            libc::sigemptyset(&mut set);
            for sig in STOP_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            BlockedStops(old)
        }
    }
}

impl Drop for BlockedStops {
    fn drop(&mut self) {
        // SAFETY: the mask this thread had before.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

struct Decrement(&'static AtomicUsize);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A program in a process group of its own, so that it is killed with
/// what it started (the stages of an `sh -c` pipeline), its standard error
/// read on a thread as it runs: a chatty program (`pg_restore --verbose`)
/// would otherwise block on a full pipe while tresor waits on its other end.
pub(crate) struct Program {
    child: Child,
    stderr: Stderr,
    /// Disconnected once the reading thread has ended.
    drained: Receiver<()>,
    /// Its entry in [`GROUPS`] until it is reaped.
    slot: Option<usize>,
}

impl Program {
    pub(crate) fn start(cmd: &mut Command, stdin: Stdio, stdout: Stdio) -> std::io::Result<Program> {
        let (mut child, slot) = started_registered(without_secrets(cmd).stdin(stdin).stdout(stdout).stderr(Stdio::piped()))?;
        let mut pipe = child.stderr.take().expect("piped");
        let stderr = Stderr::default();
        let said = stderr.clone();
        let (ended, drained) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Dropped as the thread ends, which is what `said` waits for.
            let _ended = ended;
            let mut buf = [0; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => said.hear(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Ok(Program { child, stderr, drained, slot: Some(slot) })
    }

    pub(crate) fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.reaped();
        }
        Ok(status)
    }

    /// Wait for the program to exit: its status and what it said.
    pub(crate) fn wait(&mut self) -> std::io::Result<(ExitStatus, String)> {
        let status = self.child.wait()?;
        self.reaped();
        Ok((status, self.said()))
    }

    /// Once reaped, its id (its group's) may be another's: a stop must not kill it.
    fn reaped(&mut self) {
        if let Some(slot) = self.slot.take() {
            GROUPS[slot].store(0, SeqCst);
        }
    }

    /// What it said on standard error, once it has exited.
    pub(crate) fn said(&self) -> String {
        if self.drained.recv_timeout(STDERR_AFTER_EXIT) == Err(RecvTimeoutError::Timeout) {
            self.stderr.close();
        }
        self.stderr.text()
    }

    /// Kill it with its process group, and reap it. Only for a program not
    /// reaped yet: until then its id, the group's, is not reused.
    pub(crate) fn kill(&mut self) {
        let group = i32::try_from(self.child.id()).expect("a process id");
        // SAFETY: kill(2) on a process group id, no memory involved.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        if self.child.wait().is_ok() {
            self.reaped();
        }
    }
}

/// Nothing reads what it says once it is gone (a hook that succeeded is
/// never asked), so a leftover that talks for ever holds no memory. One
/// dropped unreaped is killed: nothing tresor started runs on unwatched.
impl Drop for Program {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.kill();
        }
        self.stderr.close();
    }
}

struct ChildOutput {
    name: String,
    program: Program,
    reaped: bool,
    word: Word,
}

impl Read for ChildOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stdout = self.program.child.stdout.as_mut().expect("piped");
        let n = stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl ChildOutput {
    /// At the end of the output: the program must have succeeded.
    fn finish(&mut self) -> std::io::Result<()> {
        let (status, said) = self.program.wait()?;
        self.reaped = true;
        if status.success() {
            return Ok(());
        }
        let said = (self.word)(&said).unwrap_or_else(|| "no message".into());
        Err(std::io::Error::other(format!("{} failed ({status}): {said}; no snapshot was saved", self.name)))
    }
}

/// A backup that stops reading early (its storage failed, a verify error,
/// a cancelled job) drops the output unfinished: the program would go on
/// until it next writes into the closed pipe (a `pg_basebackup` holding a
/// backup open on the server, a `command:` that blocks) and stay a zombie
/// in a long-lived daemon. After `finish` (the program reaped) there is
/// nothing to do.
impl Drop for ChildOutput {
    fn drop(&mut self) {
        if !self.reaped {
            self.program.kill();
        }
    }
}

/// `--to command:…`: the stream goes to a program's standard input
/// (`mariadb`, `vault operator raft snapshot restore /dev/stdin`, …).
pub struct CommandTarget {
    name: String,
    command: Option<Command>,
    child: Option<Running>,
    word: Word,
}

/// A target program taking its input.
struct Running {
    program: Program,
    stdin: ChildStdin,
}

impl CommandTarget {
    pub fn new(command: &str) -> Result<CommandTarget> {
        let source = CommandSource::new(command)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&source.command);
        Ok(CommandTarget::program(source.name(), cmd))
    }

    /// A prepared program (`pg_restore …`), named `name` in messages.
    pub(crate) fn program(name: String, cmd: Command) -> CommandTarget {
        CommandTarget { name, command: Some(cmd), child: None, word: last_word }
    }

    /// A prepared program whose failure `word` finds in its standard error.
    pub(crate) fn heard(mut self, word: Word) -> CommandTarget {
        self.word = word;
        self
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    /// Close the program's input and wait: what it said on standard error.
    pub(crate) fn finish_with_stderr(&mut self) -> Result<String> {
        let Running { mut program, stdin } = self.child.take().expect("begun");
        drop(stdin);
        let (status, text) = program.wait().map_err(|e| Error::failed(self.name(), e))?;
        if !status.success() {
            let said = (self.word)(&text).unwrap_or_else(|| "no message".into());
            return Err(Error::failed(self.name(), format!("failed ({status}): {said}")));
        }
        Ok(text)
    }
}

/// A restore that fails mid-stream drops the target unfinished: killed,
/// not given end of input, so the program cannot take a partial stream as
/// the whole one (and commit it), and reaped, not left a zombie.
impl Drop for CommandTarget {
    fn drop(&mut self) {
        if let Some(mut running) = self.child.take() {
            running.program.kill();
        }
    }
}

impl crate::Target for CommandTarget {
    fn begin(&mut self, _len: u64, _overwrite: bool) -> Result<()> {
        let mut cmd = self.command.take().expect("begun once");
        let mut program = Program::start(&mut cmd, Stdio::piped(), Stdio::inherit())
            .map_err(|e| Error::failed(self.name(), format!("cannot start it: {e}")))?;
        let stdin = program.take_stdin().expect("piped");
        self.child = Some(Running { program, stdin });
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let name = self.name();
        let stdin = &mut self.child.as_mut().expect("begun").stdin;
        // A program that stopped reading has failed: finish() says why.
        if stdin.write_all(data).is_err() {
            return self.finish().map(|_| ()).and(Err(Error::failed(name, "it stopped reading its input")));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<String> {
        self.finish_with_stderr()?;
        Ok(format!("{} took the data", self.name()))
    }
}

/// A program's own last word on a failure: the last line of what it wrote
/// (its stderr, or its log) that is not blank, as written.
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().rfind(|l| !l.trim().is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_programs_last_word_is_its_last_line_that_is_not_blank() {
        assert_eq!(last_line("starting\n  pg_dump: connection refused \n \t\n\n"), Some("  pg_dump: connection refused "));
        assert_eq!(last_line("one line"), Some("one line"));
        assert_eq!(last_line(" \n\t\n"), None);
        assert_eq!(last_line(""), None);
    }

    #[test]
    fn a_command_is_named_without_the_passwords_of_its_urls() {
        let command = "true postgres://app:hunter2@db/shop postgres://db/shop?sslmode=require&password=hunter2 && echo 'pg_dump: connection refused' >&2 && exit 2";
        let shown = "true postgres://app:***@db/shop postgres://db/shop?sslmode=require&password=*** && echo 'pg_dump: connection refused' >&2 && exit 2";
        let mut source = CommandSource::new(command).unwrap();
        assert_eq!(source.info().url.as_deref(), Some(format!("command:{shown}").as_str()));
        let mut stream = source.open().unwrap();
        let err = stream.reader.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert_eq!(err, format!("command {shown:?} failed (exit status: 2): pg_dump: connection refused; no snapshot was saved"));
        let mut target = CommandTarget::new(&format!("cat >/dev/null; {command}")).unwrap();
        crate::Target::begin(&mut target, 0, false).unwrap();
        let err = crate::Target::finish(&mut target).unwrap_err().to_string();
        let shown = format!("cat >/dev/null; {shown}");
        assert_eq!(err, format!("command {shown:?}: failed (exit status: 2): pg_dump: connection refused"));
    }

    /// Whether process `pid` (a zombie too: /proc keeps its entry) is gone
    /// once `end` ran. It is killed either way, so a failure leaves none behind.
    fn gone_after(pid: &str, end: impl FnOnce()) -> bool {
        let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
        assert!(proc.exists(), "{pid} runs");
        end();
        let gone = !proc.exists();
        let _ = Command::new("kill").args(["-KILL", pid]).output();
        gone
    }

    #[test]
    fn a_program_whose_output_is_dropped_unfinished_is_killed_and_reaped() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo $$; exec sleep 600"]);
        let mut reader = spawn_output("sleeper".into(), cmd).unwrap();
        let mut pid = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut reader), &mut pid).unwrap();
        assert!(gone_after(pid.trim(), || drop(reader)), "sleep {} outlived its reader", pid.trim());
    }

    /// What `sh -c` started dies with it: the program is killed with its
    /// process group.
    #[test]
    fn what_a_dropped_programs_shell_started_is_killed_with_it() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 600 & echo $!; wait"]);
        let mut reader = spawn_output("pipeline".into(), cmd).unwrap();
        let mut pid = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut reader), &mut pid).unwrap();
        assert!(runs(pid.trim()), "sleep {} runs", pid.trim());
        drop(reader);
        assert!(!survives(pid.trim()), "sleep {} outlived the shell that started it", pid.trim());
    }

    /// A program that leaves a process behind holding its standard error
    /// (`daemon &`) has ended when it exits: its output is not held open
    /// until what it left behind ends.
    #[test]
    fn a_program_ends_when_it_exits_not_when_what_it_left_behind_does() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 600 >/dev/null & echo $!"]);
        let mut reader = spawn_output("daemonizer".into(), cmd).unwrap();
        let mut pid = String::new();
        reader.read_to_string(&mut pid).unwrap();
        let running = runs(pid.trim());
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).output();
        assert!(running, "the output of the program that started sleep {} ended only with it", pid.trim());
    }

    /// A program that says `first` on standard error and exits, leaving
    /// behind a process that says "late" there after `secs` seconds.
    fn leaving_a_talker(first: &str, secs: u32) -> (tempfile::TempDir, Program) {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(r#"printf '{first}' >&2; (sleep {secs}; echo late >&2; touch "$0"/spoke; sleep 1) >/dev/null &"#);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]).arg(dir.path());
        let program = Program::start(&mut cmd, Stdio::null(), Stdio::null()).unwrap();
        (dir, program)
    }

    /// Once the leftover has spoken, and its words had time to be read.
    fn after_it_spoke(dir: &tempfile::TempDir) {
        while !dir.path().join("spoke").exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    /// What a process left behind says once its program's standard error
    /// has been waited for is not kept.
    #[test]
    fn what_is_said_after_the_wait_for_a_programs_stderr_is_not_kept() {
        let (dir, mut program) = leaving_a_talker("bye\\n", 7);
        let (status, said) = program.wait().unwrap();
        assert!(status.success());
        assert_eq!(said, "bye\n");
        after_it_spoke(&dir);
        assert_eq!(program.stderr.text(), "bye\n");
    }

    /// A program dropped without being asked what it said (a hook that
    /// succeeded) keeps nothing its leftovers say afterwards.
    #[test]
    fn what_is_said_after_a_program_is_dropped_is_not_kept() {
        let (dir, mut program) = leaving_a_talker("", 3);
        while program.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let heard = program.stderr.clone();
        drop(program);
        after_it_spoke(&dir);
        assert_eq!(heard.text(), "");
    }

    /// Whether process `pid` runs: neither gone nor a zombie (a killed
    /// grandchild stays one until init reaps it).
    pub(crate) fn runs(pid: &str) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    }

    /// Whether `pid` still runs once given time to die (a process group's
    /// kill is not waited for). It is killed either way.
    pub(crate) fn survives(pid: &str) -> bool {
        let since = std::time::Instant::now();
        while runs(pid) && since.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let survived = runs(pid);
        let _ = Command::new("kill").args(["-KILL", pid]).output();
        survived
    }

    /// A program that says a megabyte on standard error before it reads
    /// its input (a verbose `pg_restore`) takes all of it: with its stderr
    /// left in the pipe, both sides would wait on each other forever.
    #[test]
    fn a_restore_program_that_talks_before_it_reads_takes_all_its_input() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut target = CommandTarget::new("head -c 1048576 /dev/zero | tr '\\0' x >&2; wc -c >&2").unwrap();
            crate::Target::begin(&mut target, 1 << 20, false).unwrap();
            let written = (0..16).try_for_each(|_| crate::Target::write(&mut target, &[7u8; 64 << 10]));
            let _ = done.send(written.and_then(|()| target.finish_with_stderr()));
        });
        let said = finished.recv_timeout(std::time::Duration::from_secs(120)).expect("the restore program and tresor wait on each other");
        let said = said.unwrap();
        assert_eq!((said.len(), said.strip_prefix(&"x".repeat(1 << 20))), ((1 << 20) + 8, Some("1048576\n")));
    }

    #[test]
    fn a_restore_program_dropped_mid_stream_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut target = CommandTarget::new(&format!("echo $$ > {}; exec sleep 600", pidfile.display())).unwrap();
        crate::Target::begin(&mut target, 7, false).unwrap();
        crate::Target::write(&mut target, b"partial").unwrap();
        let started = std::time::Instant::now();
        let pid = loop {
            let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
            if text.ends_with('\n') || started.elapsed().as_secs() > 10 {
                break text.trim().to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(gone_after(&pid, || drop(target)), "sleep {pid} outlived its restore");
    }
}
