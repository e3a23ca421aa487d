//! The pages a person keeps open: the status page (`/`), a page per source
//! (`/sources/NAME`) and the compliance report (`/report`). Plain HTML with
//! inline CSS and SVG and no script, reloaded by the browser, laid out as
//! cards on a phone. Everything that comes from the plan, the state or a
//! repository is escaped.

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::daemon::Shared;
use crate::plan::Plan;
use crate::report::bytes;
use crate::state::Job;
use crate::view::class_states;

/// Seconds between reloads: the status page, and a source page (which asks the repository).
const REFRESH: u32 = 15;
const SOURCE_REFRESH: u32 = 60;
/// Slices of the RPO history sparkline.
const BUCKETS: usize = 48;
/// The backup success rate a class should reach.
const SUCCESS_TARGET: f64 = 99.9;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A source page's path, its name percent-encoded.
fn source_href(name: &str) -> String {
    let enc: String = name
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("/sources/{enc}")
}

fn source_link(name: &str) -> String {
    format!("<a href=\"{}\">{}</a>", source_href(name), esc(name))
}

fn shell(title: &str, refresh: u32, body: &str, now: DateTime<Utc>) -> String {
    format!(include_str!("status.html"), title = esc(title), refresh = refresh, body = body, now = now.format("%Y-%m-%d %H:%M:%S UTC"))
}

/// A duration for people: tenths of seconds for a quick restore, days for a stale backup.
fn human(secs: f64) -> String {
    match secs {
        s if s < 1.0 => format!("{s:.2} s"),
        s if s < 10.0 => format!("{s:.1} s"),
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A table that scrolls sideways on a narrow screen (or turns into cards).
fn table(id: &str, cards: bool, head: &[&str], rows: &str) -> String {
    let th: String = head.iter().map(|h| format!("<th>{h}</th>")).collect();
    let class = if cards { " class=\"cards\"" } else { "" };
    let none = format!("<tr><td class=\"none\" colspan=\"{}\">none</td></tr>\n", head.len());
    let rows = if rows.is_empty() { &none } else { rows };
    format!("<div class=\"scroll\"><table id=\"{id}\"{class}>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{rows}</tbody></table></div>\n")
}

/// The class's RPO over time as peaks: the period from its first restorable
/// point (or `since`) to `now` cut into slices, each with the oldest the
/// class's newest restorable point got in it (just before a backup landed,
/// or at the slice's end). `points` holds each source's restorable points,
/// oldest first; empty while a source has none.
pub fn rpo_history(points: &[Vec<DateTime<Utc>>], since: DateTime<Utc>, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)> {
    let points: Vec<Vec<DateTime<Utc>>> = points.iter().map(|p| p.iter().copied().filter(|t| *t <= now).collect()).collect();
    let Some(first) = points.iter().map(|p| p.first().copied()).collect::<Option<Vec<_>>>() else { return Vec::new() };
    let Some(start) = first.into_iter().max().map(|f| f.max(since)) else { return Vec::new() };
    let secs = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
    // The class's age just before `t`: every source has a point before it once t > start.
    let age = |t: DateTime<Utc>| {
        points.iter().map(|p| p[..p.partition_point(|x| *x < t)].last().map_or(0.0, |last| secs(t - *last))).fold(0.0, f64::max)
    };
    if now <= start {
        let newest = points.iter().filter_map(|p| p.last()).min().copied().unwrap_or(now);
        return vec![(now, secs(now - newest))];
    }
    let mut events: Vec<DateTime<Utc>> = points.iter().flatten().copied().filter(|t| *t > start).collect();
    events.sort();
    let width = (now - start) / BUCKETS as i32;
    let mut next = 0;
    (1..=BUCKETS)
        .map(|i| {
            let end = if i == BUCKETS { now } else { start + width * i as i32 };
            let mut peak = age(end);
            while next < events.len() && events[next] <= end {
                peak = peak.max(age(events[next]));
                next += 1;
            }
            (end, peak)
        })
        .collect()
}

/// A sparkline of the RPO history with the target as a dashed line; peaks
/// over the target are red dots.
pub fn sparkline(history: &[(DateTime<Utc>, f64)], target: f64) -> String {
    let (w, h, pad) = (168.0, 38.0, 3.0);
    let (Some(first), Some(last)) = (history.first(), history.last()) else {
        return "<span class=\"muted\">no restorable point yet</span>".into();
    };
    let span = (last.0 - first.0).num_milliseconds().max(1) as f64;
    let peak = history.iter().map(|p| p.1).fold(0.0, f64::max);
    let top = peak.max(target) * 1.15;
    let x = |t: DateTime<Utc>| pad + (w - 2.0 * pad) * ((t - first.0).num_milliseconds() as f64 / span);
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v / top.max(1e-9));
    let line: Vec<String> = history.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
    let over: String = history
        .iter()
        .filter(|(_, v)| *v > target)
        .map(|(t, v)| format!("<circle class=\"over\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\"/>", x(*t), y(*v)))
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" data-points=\"{n}\" data-peak-seconds=\"{peak:.0}\">\
         <title>RPO since {since}: at worst {worst}, target {goal}</title>\
         <line class=\"target\" x1=\"0\" x2=\"{w}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\"/><polyline points=\"{line}\"/>{over}\
         <circle cx=\"{lx:.1}\" cy=\"{ly:.1}\" r=\"2.5\"/></svg><small>worst {worst}</small>",
        n = history.len(),
        since = time(first.0),
        worst = human(peak),
        goal = human(target),
        ty = y(target),
        line = line.join(" "),
        lx = x(last.0),
        ly = y(last.1),
    )
}

/// Backups that succeeded against the 99.9 % a class should reach.
fn success_cell(ok: u64, all: u64) -> String {
    if all == 0 {
        return "<td class=\"rate\" data-label=\"backups ok, 30 days\">—<small>no backup yet</small></td>".into();
    }
    // Rounded down, so 99.95 % never shows as a met 100 %.
    let rate = if ok == all { "100".to_string() } else { format!("{:.2}", (ok as f64 * 10_000.0 / all as f64).floor() / 100.0) };
    let verdict = if ok * 1000 >= all * (SUCCESS_TARGET * 10.0) as u64 { "ok" } else { "bad" };
    format!(
        "<td class=\"rate {verdict}\" data-label=\"backups ok, 30 days\" data-success-rate=\"{rate}\">{rate} %<small>{ok} of {all}, target {SUCCESS_TARGET} %</small></td>"
    )
}

/// The newest drill of a class: its verdict and measured RTO against the
/// target. The last cell of a class's row, a bare `<td>` that starts with
/// the verdict: how the drill tests find it.
fn drill_cell(d: &Value, rto_target: f64) -> String {
    if d.is_null() {
        return "<td>never</td>".into();
    }
    let when = d["time"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    let (verdict, class) = if d["passed"] == true { ("passed", "ok") } else { ("FAILED", "bad") };
    // A drill that failed measured no RTO (`DrillReport::measured_rto`).
    let rto = match d["rto_seconds"].as_f64() {
        Some(rto) => format!(
            "data-rto-seconds=\"{rto:.3}\">(RTO <span class=\"{}\">{}</span>",
            if rto <= rto_target { "ok" } else { "bad" },
            human(rto)
        ),
        None => ">(no RTO measured".into(),
    };
    format!(
        "<td>{verdict} {when} <span class=\"drill {class}\" data-verdict=\"{verdict}\" {rto}, \
         target {})</span><small>{} · <a href=\"/report\">report</a></small></td>",
        human(rto_target),
        esc(d["source"].as_str().unwrap_or("")),
        when = when.unwrap_or_default(),
    )
}

fn class_row(plan: &Plan, c: &Value, history: &[(DateTime<Utc>, f64)], counts: (u64, u64)) -> String {
    let name = c["name"].as_str().unwrap_or("");
    let rto_target = plan.classes.get(name).map_or(0, |k| k.rto.secs()) as f64;
    let pending: Vec<String> = c["pending"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).map(source_link).collect();
    let age = match c["age_seconds"].as_f64() {
        _ if pending.len() == plan.sources.iter().filter(|s| s.class == name).count() => "never".to_string(),
        Some(a) => format!("{} old", human(a)),
        None => "never".to_string(),
    };
    let age = match pending.is_empty() {
        true => age,
        false => format!("{age}<small>first backup pending: {}</small>", pending.join(", ")),
    };
    let failing: Vec<String> = c["failing"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).map(source_link).collect();
    let state = esc(c["state"].as_str().unwrap_or(""));
    format!(
        "<tr class=\"{state}\" data-class=\"{n}\"><td class=\"name\" data-label=\"class\"><strong>{n}</strong><small>{desc}</small></td>\
         <td data-label=\"RPO\">{rpo}</td><td data-label=\"RTO\">{rto}</td><td class=\"state\" data-label=\"state\">{state}</td>\
         <td data-label=\"newest restorable point\">{age}</td><td data-label=\"RPO history\">{spark}</td>{rate}\
         <td data-label=\"failing sources\">{failing}</td>{drill}</tr>\n",
        n = esc(name),
        desc = esc(c["description"].as_str().unwrap_or("")),
        rpo = esc(c["rpo"].as_str().unwrap_or("")),
        rto = esc(c["rto"].as_str().unwrap_or("")),
        spark = sparkline(history, c["rpo_seconds"].as_f64().unwrap_or(0.0)),
        rate = success_cell(counts.0, counts.1),
        drill = drill_cell(&c["last_drill"], rto_target),
        failing = failing.join(", "),
    )
}

/// Each class's row: targets, state, RPO history and its success rate.
fn class_rows(shared: &Shared, plan: &Plan, now: DateTime<Utc>) -> String {
    let counts = shared.state.backup_counts(now - chrono::Duration::days(30)).unwrap_or_default();
    let mut rows = String::new();
    for c in class_states(shared) {
        let name = c["name"].as_str().unwrap_or("");
        let sources: Vec<&str> = plan.sources.iter().filter(|s| s.class == name).map(|s| s.name.as_str()).collect();
        let rpo = c["rpo_seconds"].as_i64().unwrap_or(0);
        let since = now - chrono::Duration::seconds(rpo.saturating_mul(4).max(86_400));
        let found = shared.state.restorable_points(since).unwrap_or_default();
        let points: Vec<Vec<DateTime<Utc>>> =
            sources.iter().map(|s| found.iter().filter(|(src, _)| src == s).map(|(_, t)| *t).collect()).collect();
        // By the class each job ran under: a source taken out of the plan
        // (or moved) takes none of its history along.
        rows += &class_row(plan, &c, &rpo_history(&points, since, now), counts.get(name).copied().unwrap_or_default());
    }
    rows
}

/// A job's row; its name a link where it names a source of the plan (a
/// prune's or a check's is a repository's, a rehearsal's the platform's).
fn job_row(plan: &Plan, j: &Job) -> String {
    let name = match plan.sources.iter().any(|s| s.name == j.source) {
        true => source_link(&j.source),
        false => esc(&j.source),
    };
    format!(
        "<tr class=\"job-{status}\" data-job=\"{id}\"><td>{id}</td><td>{source}</td><td>{kind}</td><td>{start}</td><td>{status}</td><td class=\"why\">{why}</td></tr>\n",
        id = j.id,
        source = name,
        kind = esc(&j.kind),
        start = time(j.started_at),
        status = esc(&j.outcome.status),
        why = esc([j.outcome.reason.clone().unwrap_or_default(), j.outcome.message.clone().unwrap_or_default()].join(" ").trim()),
    )
}

const JOB_HEAD: [&str; 6] = ["job", "source", "kind", "started", "status", "reason"];

/// Every source of the plan: its schedule, last backup and next run.
fn source_rows(shared: &Shared, plan: &Plan) -> String {
    let next = shared.next_runs.lock().expect("not poisoned").clone();
    let mut rows = String::new();
    for s in &plan.sources {
        let last = shared.state.jobs(50, Some(&s.name)).unwrap_or_default().into_iter().find(|j| j.kind == "backup");
        let success = shared.state.last_success(&s.name).ok().flatten().and_then(|j| j.ended_at);
        let _ = writeln!(
            rows,
            "<tr data-source=\"{n}\"><td data-label=\"source\">{link}</td><td data-label=\"class\">{class}</td><td data-label=\"schedule\"><code>{sched}</code></td>\
             <td data-label=\"last backup\">{last}</td><td data-label=\"last success\">{success}</td><td data-label=\"next run\">{next}</td></tr>",
            n = esc(&s.name),
            link = source_link(&s.name),
            class = esc(&s.class),
            sched = esc(&s.schedule),
            last = last.map_or("none yet".into(), |j| {
                let why = j.outcome.reason.as_deref().map(|r| format!(" ({})", esc(r))).unwrap_or_default();
                format!(
                    "<span class=\"{}\">{}</span>{why} {}",
                    if j.outcome.status == "failed" { "bad" } else { "ok" },
                    esc(&j.outcome.status),
                    time(j.started_at)
                )
            }),
            success = success.map_or("never".into(), time),
            next = next.get(&s.name).map_or("—".into(), |t| time(*t)),
        );
    }
    rows
}

/// A repository's newest check: the problems it found, else when one last
/// passed; none yet, or none scheduled.
fn checked_cell(st: &crate::metrics::Storage, scheduled: bool) -> String {
    match (st.problems, st.checked.and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))) {
        (Some(n @ 1..), _) => format!("<td class=\"bad\">{n} problem{} found</td>", if n == 1 { "" } else { "s" }),
        (_, Some(t)) => format!("<td class=\"ok\">passed {} UTC</td>", time(t)),
        _ if scheduled => "<td class=\"none\">not yet</td>".into(),
        _ => "<td class=\"none\">not scheduled</td>".into(),
    }
}

pub fn page(shared: &Shared) -> String {
    let plan = shared.plan();
    let now = shared.clock.now();
    let jobs: String = shared.state.jobs(20, None).unwrap_or_default().iter().map(|j| job_row(&plan, j)).collect();
    let next: String = shared
        .next_runs
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(k, t)| format!("<tr><td>{}</td><td>{} UTC</td></tr>\n", esc(k), time(*t)))
        .collect();
    let storage: String = shared
        .metrics
        .storage(&plan)
        .iter()
        .map(|(name, st)| {
            let free = st.free.map_or("remote".into(), bytes);
            let total = st.total.map_or(String::new(), bytes);
            let stored = st.stored.map_or("?".into(), bytes);
            let checked = checked_cell(st, plan.check_schedule(name).is_some());
            format!(
                "<tr data-repository=\"{n}\"><td>{n}</td><td>{stored}</td><td>{free}</td><td>{total}</td>{checked}</tr>\n",
                n = esc(name)
            )
        })
        .collect();
    let classes_head =
        ["class", "RPO", "RTO", "state", "newest point", "RPO history", "backups ok (30 d)", "failing sources", "last drill"];
    let unprotected = unprotected_section(shared);
    let body = [
        refused_plan_notice(shared),
        unwritable_state_notice(shared),
        "<h1>Data classes</h1>".to_string(),
        table("classes", true, &classes_head, &class_rows(shared, &plan, now)),
        "<h2>Sources</h2>".into(),
        table("sources", true, &["source", "class", "schedule", "last backup", "last success", "next run"], &source_rows(shared, &plan)),
        "<h2>Recent jobs</h2>".into(),
        table("jobs", false, &JOB_HEAD, &jobs),
        "<h2>Storage</h2>".into(),
        table("storage", false, &["repository", "stored", "free", "file system", "check"], &storage),
        "<h2>Next runs</h2>".into(),
        table("next", false, &["what", "when"], &next),
        unprotected,
        standby_section(shared, &plan, now),
        rehearsal_section(shared),
    ];
    shell("tresor status", REFRESH, &body.concat(), now)
}

/// A reload that refused the plan file, until one loads it: the page shows
/// the plan the daemon runs, which is no longer the file's.
fn refused_plan_notice(shared: &Shared) -> String {
    match shared.metrics.refused_plan() {
        Some((at, why)) => format!(
            "<p id=\"plan-refused\" class=\"bad\">The plan file {} was refused at {} UTC; the daemon runs the plan it loaded before. {}</p>\n",
            esc(&shared.plan_file.display().to_string()),
            time(at),
            esc(&why)
        ),
        None => String::new(),
    }
}

/// A state the daemon cannot write, until a write succeeds: the page reads
/// its history from there, and what ran since is missing from it.
fn unwritable_state_notice(shared: &Shared) -> String {
    match shared.metrics.state_refused() {
        Some((at, why)) => format!(
            "<p id=\"state-unwritable\" class=\"bad\">The daemon cannot write its state since {} UTC ({}): jobs still run, but this page, the API and the job history miss them.</p>\n",
            time(at),
            esc(&why)
        ),
        None => String::new(),
    }
}

/// Each warm standby's lag (crate::standby), when the plan has standbys.
fn standby_section(shared: &Shared, plan: &Plan, now: DateTime<Utc>) -> String {
    let points = shared.metrics.standbys();
    let rows: String = plan
        .sources
        .iter()
        .filter_map(|s| Some((s, s.standby.as_ref()?)))
        .map(|(s, standby)| {
            let (lag, waiting) = match points.get(&s.name) {
                Some(p) => (human(p.lag(now)), p.waiting.to_string()),
                None => ("not measured yet".into(), String::new()),
            };
            let target = esc(&standby.target.to_string());
            format!("<tr data-standby=\"{n}\"><td>{n}</td><td>{target}</td><td>{lag}</td><td>{waiting}</td></tr>\n", n = esc(&s.name))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!("<h2>Standbys</h2>{}", table("standbys", false, &["source", "standby", "lag", "not applied (segments, snapshots)"], &rows))
}

/// Each cold-start rehearsal test's newest run (crate::rehearse), from the
/// evidence logs as the daemon last read them, when there is one.
fn rehearsal_section(shared: &Shared) -> String {
    let tests = crate::report::rehearsal_reports(&shared.repos.known_rehearsals(), DateTime::<Utc>::UNIX_EPOCH);
    let rows: String = tests
        .iter()
        .map(|t| {
            let target = t.rto_target.map_or("no target".into(), |x| human(x as f64));
            let (class, verdict) = if t.passed { ("ok", "passed") } else { ("bad", "FAILED") };
            format!(
                "<tr data-rehearsal=\"{n}\"><td>{n}</td><td>{} UTC</td><td>{}</td><td>{} of {}</td><td>{} (target {target})</td><td class=\"{class}\">{verdict}</td></tr>\n",
                time(t.last_run),
                esc(&t.from),
                t.sources_back,
                t.sources,
                human(t.rto_seconds),
                n = esc(&t.test),
            )
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let head = ["test", "last run", "from", "sources back", "platform RTO", "result"];
    format!("<h2>Cold-start rehearsals</h2>{}", table("rehearsals", false, &head, &rows))
}

/// Claims in covered namespaces that no source backs up, when a survey found any.
fn unprotected_section(shared: &Shared) -> String {
    let found = shared.unprotected.lock().expect("not poisoned").clone();
    let rows: String = found
        .iter()
        .flat_map(|(ns, claims)| claims.iter().map(move |c| (ns, c)))
        .map(|(ns, c)| format!("<tr data-claim=\"{ns}/{c}\"><td>{ns}</td><td>{c}</td></tr>\n", ns = esc(ns), c = esc(c)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let count = found.values().map(Vec::len).sum::<usize>();
    format!(
        "<h2 class=\"bad\">Unprotected volumes <small>({count})</small></h2><p>Claims in namespaces the plan covers that no <code>pvc://</code> source backs up.</p>{}",
        table("unprotected", false, &["namespace", "claim"], &rows)
    )
}

fn snapshot_rows(list: &[Value]) -> String {
    list.iter()
        .rev()
        .map(|s| {
            let id = s["id"].as_str().unwrap_or("");
            let summary = &s["summary"];
            format!(
                "<tr data-snapshot=\"{id}\"><td><code>{short}</code></td><td>{time}</td><td>{kind}</td><td>{host}</td><td>{files}</td><td>{size}</td><td class=\"wrap\">{paths}</td></tr>\n",
                id = esc(id),
                short = esc(id.get(..8).unwrap_or(id)),
                time = esc(&s["time"].as_str().unwrap_or("").replace('T', " ").chars().take(19).collect::<String>()),
                kind = esc(s["source"]["kind"].as_str().unwrap_or("files")),
                host = esc(s["hostname"].as_str().unwrap_or("")),
                files = summary["total_files_processed"].as_u64().map_or("—".into(), |n| n.to_string()),
                size = summary["total_bytes_processed"].as_u64().map_or("—".into(), bytes),
                paths = esc(&s["paths"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(" ")),
            )
        })
        .collect()
}

fn drill_rows(drills: &[crate::model::DrillReport]) -> String {
    drills
        .iter()
        .map(|d| {
            let (verdict, class) = if d.passed { ("passed", "ok") } else { ("FAILED", "bad") };
            let notes = if d.passed { d.checks.join("; ") } else { d.reasons.join("; ") };
            let (measured, speed, rto_h) = match d.measured_rto() {
                Some(rto) => (format!(" data-rto-seconds=\"{rto:.3}\""), if rto <= d.rto_target as f64 { "ok" } else { "bad" }, human(rto)),
                None => (String::new(), "none", "—".into()),
            };
            format!(
                "<tr data-drill=\"{id}\"{measured}><td>{when}</td><td>{id}</td><td class=\"{class}\">{verdict}</td>\
                 <td class=\"{speed}\">{rto_h} <small>target {target}</small></td><td>{rpo}</td><td class=\"why\">{notes}</td></tr>\n",
                id = esc(&d.test_id),
                when = time(d.started),
                target = human(d.rto_target as f64),
                rpo = d.achieved_rpo().map_or("—".into(), human),
                notes = esc(&notes),
            )
        })
        .collect()
}

fn failure_rows(jobs: &[Job]) -> String {
    jobs.iter()
        .map(|j| {
            format!(
                "<tr class=\"job-failed\" data-job=\"{id}\"><td>{id}</td><td>{kind}</td><td>{start}</td><td>{reason}</td><td class=\"why\">{message}</td></tr>\n",
                id = j.id,
                kind = esc(&j.kind),
                start = time(j.started_at),
                reason = esc(j.outcome.reason.as_deref().unwrap_or("error")),
                message = esc(j.outcome.message.as_deref().unwrap_or("")),
            )
        })
        .collect()
}

/// One source: what it is, its failures, snapshots (asked of the repository), drills and jobs.
pub async fn source_page(shared: &Shared, name: &str) -> Response {
    let plan = shared.plan();
    let now = shared.clock.now();
    let Some(source) = plan.sources.iter().find(|s| s.name == name) else {
        let body = format!("<h1>No source {}</h1><p>The plan has no such source; see <a href=\"/\">the status page</a>.</p>", esc(name));
        return (StatusCode::NOT_FOUND, Html(shell("tresor: no such source", SOURCE_REFRESH, &body, now))).into_response();
    };
    let snapshots = match plan.repository_of(source) {
        Some((_, repo)) => match shared.repos.snapshots(repo, Some(name)).await {
            Ok(list) => table("snapshots", false, &["snapshot", "time", "kind", "host", "files", "size", "paths"], &snapshot_rows(&list)),
            Err(e) => format!("<p class=\"error\">cannot list the snapshots: {}</p>", esc(&e)),
        },
        None => "<p class=\"error\">the source's repository is not in the plan</p>".into(),
    };
    let failures = shared.state.failures(name, 20).unwrap_or_default();
    let jobs: String = shared.state.jobs(50, Some(name)).unwrap_or_default().iter().map(|j| job_row(&shared.plan(), j)).collect();
    let next = shared.next_runs.lock().expect("not poisoned").get(name).copied();
    let body = [
        format!("<h1>Source {}</h1>", esc(name)),
        format!(
            "<dl class=\"facts\"><dt>class</dt><dd>{class}</dd><dt>URL</dt><dd><code>{url}</code></dd><dt>schedule</dt><dd><code>{sched}</code></dd><dt>next run</dt><dd>{next}</dd></dl>",
            class = esc(&source.class),
            url = esc(&source.url.to_string()),
            sched = esc(&source.schedule),
            next = next.map_or("—".into(), |t| format!("{} UTC", time(t))),
        ),
        format!("<h2>Failures <small>({})</small></h2>", failures.len()),
        table("failures", false, &["job", "kind", "started", "reason", "message"], &failure_rows(&failures)),
        "<h2>Snapshots</h2>".into(),
        snapshots,
        "<h2>Drills</h2>".into(),
        table(
            "drills",
            false,
            &["date", "test id", "result", "measured RTO", "achieved RPO", "checks"],
            &drill_rows(&shared.state.source_drills(name, 20).unwrap_or_default()),
        ),
        "<h2>Jobs</h2>".into(),
        table("jobs", false, &JOB_HEAD, &jobs),
    ];
    Html(shell(&format!("tresor: source {name}"), SOURCE_REFRESH, &body.concat(), now)).into_response()
}

/// The compliance report of the last 30 days, as `tresor report --format html` writes it.
/// How long a built report is served again: building one reads every
/// repository's evidence log, and the page needs no token.
const REPORT_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// The compliance report, built at most once a minute and by one request
/// at a time (the others wait for it).
pub async fn report(shared: &Shared) -> Response {
    let mut built = shared.report.lock().await;
    if let Some((_, html)) = built.as_ref().filter(|(at, _)| at.elapsed() < REPORT_FRESH) {
        return Html(html.clone()).into_response();
    }
    let plan = shared.plan();
    let now = shared.clock.now();
    let since = now - chrono::Duration::days(30);
    let facts = shared.repos.facts(&plan, now).await;
    let history = shared.state.jobs_since(since).and_then(|jobs| Ok((jobs, shared.state.drills(since)?)));
    match history {
        Ok((jobs, drills)) => {
            let html = crate::report_html::html(&crate::report::build(&plan, &jobs, &drills, facts, since, now));
            *built = Some((std::time::Instant::now(), html.clone()));
            Html(html).into_response()
        }
        Err(e) => {
            let body = format!("<h1>No report</h1><p class=\"error\">{}</p>", esc(&e.to_string()));
            (StatusCode::BAD_GATEWAY, Html(shell("tresor: no report", REFRESH, &body, now))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_rpo_history_holds_the_peak_age_of_each_slice() {
        let since = at("2026-11-21T09:00:00Z");
        let now = at("2026-11-21T10:48:00Z");
        // One source backed up at 10:00, 10:12 and 10:36: the class is as old as its stalest source.
        let a = vec![at("2026-11-21T10:00:00Z"), at("2026-11-21T10:12:00Z"), at("2026-11-21T10:36:00Z")];
        let b = vec![at("2026-11-21T08:00:00Z"), at("2026-11-21T10:24:00Z")];
        let h = rpo_history(std::slice::from_ref(&a), since, now);
        assert_eq!(h.len(), BUCKETS);
        assert_eq!(h[0], (at("2026-11-21T10:01:00Z"), 60.0));
        assert_eq!(h[11].1, 720.0, "the slice with the 10:12 backup peaks just before it");
        assert_eq!(h[12].1, 60.0);
        assert_eq!(h.iter().map(|p| p.1).fold(0.0, f64::max), 1440.0, "10:12 to 10:36");
        assert_eq!(h.last(), Some(&(now, 720.0)));
        let both = rpo_history(&[a, b], since, now);
        assert_eq!(both[0], (at("2026-11-21T10:01:00Z"), 7260.0), "b's newest point is from 08:00");
        assert_eq!(both.last(), Some(&(now, 1440.0)), "b's 10:24 backup is the stalest");
        assert!(rpo_history(&[vec![at("2026-11-21T10:00:00Z")], vec![]], since, now).is_empty(), "a source without a point");
        assert_eq!(rpo_history(&[vec![now]], since, now), vec![(now, 0.0)]);
    }

    #[test]
    fn the_sparkline_draws_every_point_and_marks_those_over_the_target() {
        let t = at("2026-11-21T10:00:00Z");
        let h = [(t, 30.0), (t + chrono::Duration::minutes(1), 200.0), (t + chrono::Duration::minutes(2), 10.0)];
        let svg = sparkline(&h, 120.0);
        assert!(svg.starts_with("<svg class=\"spark\""), "{svg}");
        assert!(svg.contains("data-points=\"3\" data-peak-seconds=\"200\""), "{svg}");
        let points = svg.split(" points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(points.split(' ').count(), 3);
        assert_eq!(svg.matches("class=\"over\"").count(), 1);
        assert_eq!(sparkline(&[], 120.0), "<span class=\"muted\">no restorable point yet</span>");
    }

    #[test]
    fn success_rates_round_down_and_meet_the_target_at_99_9() {
        assert!(success_cell(999, 1000).contains("data-success-rate=\"99.90\">99.90 %"));
        assert!(success_cell(999, 1000).starts_with("<td class=\"rate ok\""));
        assert!(
            success_cell(998, 999).starts_with("<td class=\"rate bad\" data-label=\"backups ok, 30 days\" data-success-rate=\"99.89\">")
        );
        assert!(success_cell(3, 3).contains("data-success-rate=\"100\">100 %<small>3 of 3"));
    }

    #[test]
    fn what_comes_from_the_plan_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(source_link("a b/<c>"), "<a href=\"/sources/a%20b%2F%3Cc%3E\">a b/&lt;c&gt;</a>");
        let d = serde_json::json!({"time": "2026-11-21T10:09:00Z", "passed": true, "rto_seconds": 0.42, "source": "<x>"});
        let cell = drill_cell(&d, 60.0);
        assert!(
            cell.starts_with("<td>passed 2026-11-21 10:09 <span class=\"drill ok\" data-verdict=\"passed\" data-rto-seconds=\"0.420\">")
        );
        assert!(cell.contains("(RTO <span class=\"ok\">0.42 s</span>, target 60 s)</span><small>&lt;x&gt; · <a"), "{cell}");
    }
}
