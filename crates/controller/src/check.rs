//! `tresor plan check`: what parses can still contradict itself. Each
//! finding names the line it is about.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::plan::{NEVER, Plan, Query, Retention, SecretUrl, Span};
use crate::schedule::Schedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.line, self.message)
    }
}

/// Where things are in the plan's text (1-based lines; 0 when not found).
struct Lines<'a> {
    lines: Vec<&'a str>,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start_matches([' ', '-']).len()
}

/// A line's first key: of a block mapping (`name: x`), or of a flow
/// mapping that starts on it (`- {name: x, class: y}`).
fn key_of(l: &str) -> Option<&str> {
    let t = l.trim_start_matches([' ', '-']).trim_start().trim_start_matches('{').trim_start();
    let (k, _) = t.split_once(':')?;
    Some(k.trim().trim_matches(['"', '\'']))
}

/// The value of a line's first key; in a flow mapping, up to the next one.
fn value_of(l: &str) -> &str {
    let flow = l.trim_start_matches([' ', '-']).trim_start().starts_with('{');
    let v = l.split_once(':').map_or("", |(_, v)| v.split(" #").next().unwrap_or(""));
    let v = if flow { v.split([',', '}']).next().unwrap_or("") } else { v };
    v.trim().trim_matches(['"', '\''])
}

impl<'a> Lines<'a> {
    /// The block under a top-level key: (first line, end) as indices.
    fn section(&self, name: &str) -> (usize, usize) {
        let start = self.lines.iter().position(|l| indent(l) == 0 && key_of(l) == Some(name)).unwrap_or(self.lines.len());
        let end = (start + 1..self.lines.len())
            .find(|&i| indent(self.lines[i]) == 0 && key_of(self.lines[i]).is_some())
            .unwrap_or(self.lines.len());
        (start, end)
    }

    /// The line of `key:` directly under `section` (a class or repository).
    fn entry(&self, section: &str, key: &str) -> usize {
        let (start, end) = self.section(section);
        (start + 1..end).find(|&i| indent(self.lines[i]) == 2 && key_of(self.lines[i]) == Some(key)).map_or(0, |i| i + 1)
    }

    /// The line of `field:` inside the entry `key` under `section`.
    fn field(&self, section: &str, key: &str, field: &str) -> usize {
        let at = self.entry(section, key);
        if at == 0 {
            return 0;
        }
        let (_, end) = self.section(section);
        (at..end).take_while(|&i| indent(self.lines[i]) > 2).find(|&i| key_of(self.lines[i]) == Some(field)).map_or(at, |i| i + 1)
    }

    /// The line of the source's `name:`, and of one of its fields.
    fn source(&self, name: &str, field: &str) -> usize {
        self.nth_source(name, 0, field)
    }

    /// As `source`, for the `nth` (from 0) source of that name.
    fn nth_source(&self, name: &str, nth: usize, field: &str) -> usize {
        let (start, end) = self.section("sources");
        let named = (start + 1..end).filter(|&i| key_of(self.lines[i]) == Some("name") && value_of(self.lines[i]) == name);
        let Some(at) = named.clone().nth(nth).or_else(|| named.clone().next_back()) else {
            return 0;
        };
        let item = (start + 1..=at).rev().find(|&i| self.lines[i].trim_start().starts_with('-')).unwrap_or(at);
        let next =
            (item + 1..end).find(|&i| self.lines[i].trim_start().starts_with('-') && indent(self.lines[i]) <= indent(self.lines[item]));
        (item..next.unwrap_or(end)).find(|&i| key_of(self.lines[i]) == Some(field)).map_or(at + 1, |i| i + 1)
    }
}

impl Lines<'_> {
    /// The line of an application's `name:`.
    fn application(&self, name: &str) -> usize {
        let (start, end) = self.section("applications");
        (start + 1..end).find(|&i| key_of(self.lines[i]) == Some("name") && value_of(self.lines[i]) == name).map_or(start + 1, |i| i + 1)
    }
}

/// How far back a retention policy keeps snapshots, roughly.
fn reach(r: &Retention) -> Duration {
    let day = 86_400;
    let spans = [
        r.hourly.map(|k| k.reach(3600)),
        r.daily.map(|k| k.reach(day)),
        r.weekly.map(|k| k.reach(7 * day)),
        r.monthly.map(|k| k.reach(30 * day)),
        r.yearly.map(|k| k.reach(365 * day)),
    ];
    Duration::from_secs(spans.into_iter().flatten().max().unwrap_or(0))
}

fn error(line: usize, message: String) -> Finding {
    Finding { line, severity: Severity::Error, message }
}

fn warning(line: usize, message: String) -> Finding {
    Finding { line, severity: Severity::Warning, message }
}

/// Every contradiction and gap in the plan, in file order.
pub fn check(plan: &Plan, text: &str, now: DateTime<Utc>) -> Vec<Finding> {
    let at = Lines { lines: text.lines().collect() };
    let mut out = Vec::new();
    if plan.repositories.is_empty() {
        out.push(error(at.section("repositories").0 + 1, "no repository: the plan needs at least one".into()));
    }
    check_classes(plan, &at, &mut out);
    check_sources(plan, &at, now, &mut out);
    for m in plan.drills.silence.iter().flat_map(|s| &s.matchers) {
        if let Err(e) = crate::silence::matcher(m, "", "") {
            out.push(error(at.entry("drills", "silence"), e));
        }
    }
    check_rehearsal(plan, &at, &mut out);
    for (app, message) in crate::app::faults(plan) {
        out.push(error(at.application(&app), message));
    }
    check_repository_jobs(plan, &at, &mut out);
    out.sort_by_key(|f| f.line);
    out
}

/// The schedules of prune and check, and the check's slices, the daemon's
/// and each repository's own.
fn check_repository_jobs(plan: &Plan, at: &Lines, out: &mut Vec<Finding>) {
    let slices = "check_slices must be at least 1 (1: every check reads every pack)";
    for (key, schedule) in [("prune_schedule", &plan.daemon.prune_schedule), ("check_schedule", &plan.daemon.check_schedule)] {
        if let Some(e) = schedule.as_deref().filter(|s| *s != NEVER).and_then(|s| Schedule::parse(s).err()) {
            out.push(error(at.entry("daemon", key), e));
        }
    }
    if plan.daemon.check_slices == 0 {
        out.push(error(at.entry("daemon", "check_slices"), slices.into()));
    }
    // The daemon refuses to start so; the tokens may come from its environment.
    let open = plan.daemon.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_loopback());
    if open && plan.daemon.admin_token_file.is_none() && plan.daemon.read_token_file.is_none() {
        out.push(warning(
            at.entry("daemon", "listen"),
            format!(
                "daemon.listen {} is no loopback address and the plan names no token file: the daemon starts only with TRESOR_API_TOKEN or TRESOR_API_READ_TOKEN set",
                plan.daemon.listen
            ),
        ));
    }
    for (name, r) in &plan.repositories {
        for (key, schedule) in [("prune_schedule", &r.prune_schedule), ("check_schedule", &r.check_schedule)] {
            if let Some(e) = schedule.as_ref().and_then(|s| Schedule::parse(s.as_deref().filter(|s| *s != NEVER)?).err()) {
                out.push(error(at.field("repositories", name, key), format!("repository {name}: {e}")));
            }
        }
        if r.check_slices == Some(0) {
            out.push(error(at.field("repositories", name, "check_slices"), format!("repository {name}: {slices}")));
        }
    }
    // Sources write to these: a copy off site in cold storage may go
    // unchecked by choice, the copy backups land in first may not quietly.
    let written: BTreeSet<&str> = plan.sources.iter().filter_map(|s| plan.repository_of(s)).map(|(name, _)| name).collect();
    for name in written.into_iter().filter(|n| plan.check_schedule(n).is_none()) {
        let line = match plan.repositories.get(name).is_some_and(|r| r.check_schedule.is_some()) {
            true => at.field("repositories", name, "check_schedule"),
            false => at.entry("daemon", "check_schedule"),
        };
        let why = "damage in it goes unnoticed until a restore needs the data";
        out.push(warning(line, format!("repository {name} is never checked, though sources back up into it: {why}")));
    }
}

fn check_classes(plan: &Plan, at: &Lines, out: &mut Vec<Finding>) {
    let used: BTreeSet<&str> = plan.sources.iter().map(|s| s.class.as_str()).collect();
    for (name, class) in &plan.classes {
        match &class.offsite {
            Some(repo) if !plan.repositories.contains_key(repo) => out.push(error(
                at.field("classes", name, "offsite"),
                format!("class {name}: unknown repository {repo:?} for its off-site copy"),
            )),
            Some(_) => {}
            None => out.push(warning(at.entry("classes", name), format!("class {name} has no off-site copy (offsite: REPOSITORY)"))),
        }
        let keeps = reach(&class.retention);
        if class.retention == Retention::default() {
            out.push(warning(at.entry("classes", name), format!("class {name} has no retention: every snapshot is kept forever")));
        } else if let Some(min) = class.retention.minimum
            && keeps < min.0
        {
            out.push(error(
                at.field("classes", name, "retention"),
                format!("class {name}: retention keeps about {}, shorter than its minimum {min}", Span(keeps)),
            ));
        }
        if !used.contains(name.as_str()) {
            out.push(warning(at.entry("classes", name), format!("class {name} has no sources")));
        }
        check_drill(name, class, at, out);
    }
    let mut ids = BTreeSet::new();
    for (name, id) in plan.classes.iter().filter_map(|(n, c)| Some((n, c.drill.as_ref()?.id.as_deref()?))) {
        if !ids.insert(id) {
            out.push(error(at.field("classes", name, "id"), format!("class {name}: drill id {id:?} is another class's too")));
        }
    }
    for app in &plan.applications {
        if let Some(id) = app.drill.as_ref().and_then(|d| d.id.as_deref()).filter(|id| !ids.insert(id)) {
            out.push(error(at.application(&app.name), format!("application {}: drill id {id:?} is another drill's too", app.name)));
        }
    }
}

/// A class's drills: a schedule the daemon can run (else they would never
/// run), and an off-site copy to drill from when `from: offsite` asks for one.
fn check_drill(name: &str, class: &crate::plan::Class, at: &Lines, out: &mut Vec<Finding>) {
    let Some(d) = &class.drill else { return };
    if let Err(e) = Schedule::parse(&d.schedule) {
        out.push(error(at.field("classes", name, "schedule"), format!("class {name}: drill {e}")));
    }
    if d.from == crate::model::BackupCopy::Offsite && class.offsite.is_none() {
        out.push(error(
            at.field("classes", name, "from"),
            format!("class {name}: its drills restore from the off-site copy (from: offsite), but the class has no offsite: repository"),
        ));
    }
}

/// `drills.rehearsal`: a schedule the daemon can run, a copy it can
/// rehearse from (a repository of the plan, `primary` or `offsite`), and a
/// test id no class's drills use, so `drill annotate ID` finds one test.
fn check_rehearsal(plan: &Plan, at: &Lines, out: &mut Vec<Finding>) {
    let Some(r) = &plan.drills.rehearsal else { return };
    if let Err(e) = Schedule::parse(&r.schedule) {
        out.push(error(at.field("drills", "rehearsal", "schedule"), format!("drills.rehearsal: {e}")));
    }
    if !plan.repositories.contains_key(&r.from) && !["primary", "offsite"].contains(&r.from.as_str()) {
        let names: Vec<&str> = plan.repositories.keys().map(String::as_str).collect();
        out.push(error(
            at.field("drills", "rehearsal", "from"),
            format!(
                "drills.rehearsal: unknown repository {:?} to rehearse from (the plan's: {}; or primary, offsite)",
                r.from,
                names.join(", ")
            ),
        ));
    }
    let taken = plan.classes.iter().find(|(_, c)| r.id.is_some() && c.drill.as_ref().and_then(|d| d.id.as_ref()) == r.id.as_ref());
    if let (Some(id), Some((class, _))) = (&r.id, taken) {
        out.push(error(at.field("drills", "rehearsal", "id"), format!("drills.rehearsal: test id {id:?} is class {class}'s drill id too")));
    }
    let app = plan.applications.iter().find(|a| r.id.is_some() && a.drill.as_ref().and_then(|d| d.id.as_ref()) == r.id.as_ref());
    if let (Some(id), Some(app)) = (&r.id, app) {
        let name = &app.name;
        out.push(error(
            at.field("drills", "rehearsal", "id"),
            format!("drills.rehearsal: test id {id:?} is application {name}'s drill id too"),
        ));
    }
}

/// A source URL's kind, without what could be a password: `redis://`, `command:`, or `a path`.
fn scheme(url: &SecretUrl) -> String {
    match url.scheme() {
        Some(s) => format!("{s}://"),
        None if url.starts_with("command:") => "command:".into(),
        None => "a path".into(),
    }
}

/// A source's transforms file: for `k8s://` sources only, and readable as transforms.
fn check_transforms(s: &crate::plan::SourceSpec, at: &Lines, out: &mut Vec<Finding>) {
    let Some(file) = &s.transforms else { return };
    let why = if !s.url.starts_with("k8s://") {
        Some(format!("transforms: is for k8s:// sources, not {}", scheme(&s.url)))
    } else {
        tresor_sources::k8s_transform::Transforms::load(file).err().map(|e| format!("transforms: {e}"))
    };
    if let Some(why) = why {
        out.push(error(at.source(&s.name, "transforms"), format!("source {}: {why}", s.name)));
    }
}

/// What is wrong with a source's URL that no server need be asked about:
/// one the sources parse (a port that is no number), or a kind no source
/// has (`etcd-data:` is a restore target; read as a path, it backed up
/// nothing, and only `plan check --connect` said so).
fn source_url_fault(url: &str) -> Option<String> {
    const PARSED: [&str; 7] = ["redis://", "rediss://", "postgres://", "postgresql://", "etcd://", "command:", "pgbase://"];
    const OTHERS: [&str; 6] = ["k8s://", "pvc://", "redis-aof:", "bucket+s3://", "bucket+azblob://", "bucket+gcs://"];
    if PARSED.iter().any(|p| url.starts_with(p)) {
        return tresor_sources::from_url(url).err().map(|e| e.to_string());
    }
    let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    match scheme {
        Some(s) if !OTHERS.iter().any(|p| url.starts_with(p)) => Some(format!(
            "no source is of kind {s}: (a path, or redis://, postgres://, etcd://, pgbase://, command:, k8s://, pvc://, redis-aof:, bucket+s3://, bucket+azblob://, bucket+gcs://)"
        )),
        _ => None,
    }
}

fn check_sources(plan: &Plan, at: &Lines, now: DateTime<Utc>, out: &mut Vec<Finding>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &plan.sources {
        // The how-manieth source of this name: each finding names its own lines.
        let nth = *seen.entry(s.name.as_str()).and_modify(|n| *n += 1).or_default();
        for why in s.verify.queries.iter().filter_map(Query::contradiction) {
            out.push(error(at.nth_source(&s.name, nth, "verify"), format!("source {}: {why}", s.name)));
        }
        if nth > 0 {
            out.push(error(at.nth_source(&s.name, nth, "name"), format!("source {} is named twice", s.name)));
        }
        if s.name.contains(',') {
            let why =
                format!("source {}: a name may not hold a comma: its backups are tagged source=NAME, and tags split at commas", s.name);
            out.push(error(at.nth_source(&s.name, nth, "name"), why));
        }
        if let Some(why) = source_url_fault(s.url.expose()) {
            out.push(error(at.nth_source(&s.name, nth, "url"), format!("source {}: {why}", s.name)));
        }
        if plan.repositories.contains_key(&s.name) {
            // The job history, the queue and the status page know jobs by name:
            // a repository's prune and check would pass for the source's jobs.
            let why = format!("source {0} has the name of a repository: their jobs would share one history (rename one)", s.name);
            out.push(error(at.nth_source(&s.name, nth, "name"), why));
        }
        let Some(class) = plan.classes.get(&s.class) else {
            let known = plan.classes.keys().cloned().collect::<Vec<_>>().join(", ");
            out.push(error(
                at.nth_source(&s.name, nth, "class"),
                format!("source {}: unknown class {:?} (classes: {known})", s.name, s.class),
            ));
            continue;
        };
        if let Some(r) = &s.repository
            && !plan.repositories.contains_key(r)
        {
            out.push(error(at.nth_source(&s.name, nth, "repository"), format!("source {}: unknown repository {r:?}", s.name)));
        }
        if s.scope.is_some() && !s.url.starts_with("k8s://") {
            out.push(error(
                at.nth_source(&s.name, nth, "scope"),
                format!("source {}: scope: is for k8s:// sources, not {}", s.name, scheme(&s.url)),
            ));
        }
        check_transforms(s, at, out);
        if s.pod.is_some() && !s.url.starts_with("pvc://") {
            out.push(error(
                at.nth_source(&s.name, nth, "pod"),
                format!("source {}: pod: is for pvc:// sources, not {}", s.name, scheme(&s.url)),
            ));
        }
        if let Some(why) = s.standby.as_ref().and_then(|b| crate::standby::refused(&s.url, b, &scheme(&s.url))) {
            out.push(error(at.nth_source(&s.name, nth, "standby"), format!("source {}: {why}", s.name)));
        }
        match Schedule::parse(&s.schedule) {
            Err(e) => out.push(error(at.nth_source(&s.name, nth, "schedule"), format!("source {}: {e}", s.name))),
            Ok(sched) => {
                let gap = sched.longest_gap(now) + s.spread.map_or(Duration::ZERO, |d| d.0);
                let wal = crate::walrpo::archive_covers(s, class.rpo);
                if gap > class.rpo.0 && !matches!(wal, Some(Ok(()))) {
                    let why = wal.and_then(Result::err).map_or(String::new(), |w| format!(", and {w}"));
                    out.push(error(
                        at.nth_source(&s.name, nth, "schedule"),
                        format!(
                            "source {}: schedule {:?} leaves up to {} between backups, longer than class {}'s RPO {}{why}",
                            s.name,
                            s.schedule,
                            Span(gap),
                            s.class,
                            class.rpo
                        ),
                    ));
                }
            }
        }
    }
}
