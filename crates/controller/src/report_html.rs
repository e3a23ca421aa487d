//! Rendering a report: Markdown, and a
//! self-contained HTML page with inline SVG charts of RTO and RPO over time.

use std::fmt::Write;

use crate::model::DrillReport;
use crate::report::{Report, dur, pct, rate};

fn yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# tresor compliance report\n\nGenerated {} for the period since {}.\n\n",
        r.generated.format("%Y-%m-%d %H:%M UTC"),
        r.since.format("%Y-%m-%d")
    );
    s += "## Recovery objectives per class\n\n| class | RPO target | RPO now | worst gap | RPO | WAL archive lag | RTO target | measured RTO | RTO | predicted RTO | backups ok (target > 99.9 %) | drills passed (target 100 %) | last drill | last proven (primary / off-site) | off-site | retention |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for c in &r.classes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} ({}/{}) | {} ({}/{}) | {} | {} / {} | {} | {} |",
            c.name,
            dur(Some(c.rpo_target as f64)),
            dur(c.rpo_current),
            dur(c.rpo_worst_gap),
            if c.rpo_met { "met" } else { "MISSED" },
            dur(c.wal_archive_lag),
            dur(Some(c.rto_target as f64)),
            dur(c.rto_measured),
            yes(c.rto_met),
            c.rto_unpredictable.clone().unwrap_or_else(|| dur(c.rto_predicted)),
            if c.rto_prediction_over_target { " (over target)" } else { "" },
            pct(rate(c.backups_succeeded, c.backups)),
            c.backups_succeeded,
            c.backups,
            pct(rate(c.drills_passed, c.drills)),
            c.drills_passed,
            c.drills,
            c.last_drill.map_or("never".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
            date(c.last_proven_primary),
            date(c.last_proven_offsite),
            c.offsite.as_deref().map_or("none".to_string(), |o| format!(
                "{o} ({})",
                c.last_offsite_copy.map_or("no copy yet".into(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            )),
            if c.retention_ok { c.retention.clone() } else { format!("{} (a retention run FAILED)", c.retention) }
        );
    }
    let held = r.holds.iter().map(|(repo, n)| format!("{repo}: {n}"));
    let unknown = r.unread.keys().filter(|repo| !r.holds.contains_key(*repo)).map(|repo| format!("{repo}: unknown"));
    let holds: Vec<String> = held.chain(unknown).collect();
    let _ = writeln!(
        s,
        "\nLegal holds: {}. Every repository is encrypted end to end (AEAD; keys from Argon2id).",
        if holds.is_empty() { "none".into() } else { holds.join(", ") }
    );
    for (repo, why) in &r.unread {
        let _ = writeln!(s, "\n**Repository {repo} could not be read** ({why}): its holds, rehearsals and findings are missing here.");
    }
    test_plan(r, &mut s);
    s += "\n## Test protocol\n\n| date | test id | test | copy | scope | result | measured RTO | achieved RPO | findings / follow-ups | owner |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for d in &r.protocol {
        let result = if d.passed { "passed".to_string() } else { format!("FAILED: {}", d.reasons.join("; ")) };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
            d.started.format("%Y-%m-%d %H:%M"),
            d.test_id,
            d.test.as_deref().unwrap_or("—"),
            copy(d),
            d.source,
            d.class,
            cell(&result),
            dur(d.measured_rto()),
            dur(d.achieved_rpo()),
            cell(&follow_ups(r, &d.test_id, d.passed)),
            d.owner.as_deref().unwrap_or("—")
        );
    }
    rehearsals(r, &mut s);
    s += "\n## Compliance evidence\n\n| framework | control | requirement | evidence |\n|---|---|---|---|\n";
    for c in &r.compliance {
        let _ = writeln!(s, "| {} | {} | {} | {} |", c.framework, c.control, c.requirement, c.evidence);
    }
    s
}

fn date(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("never".into(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// Text fit for a table cell: one line, no column separator.
fn cell(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "/")
}

/// The copy a drill restored: `primary`, or `off-site` with the repository's name.
fn copy(d: &DrillReport) -> String {
    match (&d.from, &d.repository) {
        (crate::model::BackupCopy::Offsite, Some(repo)) => format!("off-site ({repo})"),
        (from, _) => from.as_str().to_string(),
    }
}

/// What people recorded about a drill or rehearsal; for a failed one without any, what is due.
fn follow_ups(r: &Report, test_id: &str, passed: bool) -> String {
    let notes: Vec<String> = r
        .annotations
        .iter()
        .filter(|a| a.test_id == test_id)
        .map(|a| {
            let parts: Vec<String> = [("finding", &a.finding), ("follow-up", &a.follow_up)]
                .iter()
                .filter_map(|(k, v)| Some(format!("{k}: {}", v.as_deref()?)))
                .collect();
            format!("{} ({}, {})", parts.join("; "), a.author, a.time.format("%Y-%m-%d"))
        })
        .collect();
    match (notes.is_empty(), passed) {
        (false, _) => notes.join("; "),
        (true, true) => "none".into(),
        (true, false) => "investigate and repeat the drill".into(),
    }
}

/// The cold-start rehearsals: per test, its newest run against the platform target.
fn rehearsals(r: &Report, s: &mut String) {
    *s += "\n## Cold-start rehearsals\n\n| test | last run | protocol entry | from | sources back | platform RTO | target | RTO | result | findings / follow-ups |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for t in &r.rehearsals {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} of {} | {} | {} | {} | {} | {} |",
            t.test,
            t.last_run.format("%Y-%m-%d %H:%M"),
            t.test_id,
            t.from,
            t.sources_back,
            t.sources,
            dur(Some(t.rto_seconds)),
            t.rto_target.map_or("—".into(), |x| dur(Some(x as f64))),
            yes(t.rto_met),
            if t.passed { "passed" } else { "FAILED" },
            cell(&follow_ups(r, &t.test_id, t.passed)),
        );
    }
}

/// The test plan: each class's drills as the plan states them.
fn test_plan(r: &Report, s: &mut String) {
    *s +=
        "\n## Test plan\n\n| test id | type | scope | copy | frequency | owner | last run | result |\n|---|---|---|---|---|---|---|---|\n";
    for t in &r.tests {
        let every = t.every.map_or(String::new(), |e| format!(" (every {})", crate::plan::Span(std::time::Duration::from_secs(e))));
        let result = match t.last_passed {
            Some(true) => "passed",
            Some(false) => "FAILED",
            None => "not run",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}) | {} | {}{every} | {} | {} | {result} |",
            t.id.as_deref().unwrap_or("—"),
            t.test_type.as_str(),
            t.class,
            t.scope.join(", "),
            t.from.as_str(),
            t.frequency,
            t.owner.as_deref().unwrap_or("—"),
            date(t.last_run),
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A small line chart: measured values over time against a target line.
fn chart(title: &str, points: &[(i64, f64)], target: f64) -> String {
    let (w, h, pad) = (520.0, 180.0, 30.0);
    if points.is_empty() {
        return format!("<figure><figcaption>{}</figcaption><p>no drills yet</p></figure>", esc(title));
    }
    let (t0, t1) = (points.iter().map(|p| p.0).min().unwrap_or(0), points.iter().map(|p| p.0).max().unwrap_or(0));
    let top = points.iter().map(|p| p.1).fold(target, f64::max) * 1.1;
    let x = |t: i64| pad + (w - 2.0 * pad) * if t1 > t0 { (t - t0) as f64 / (t1 - t0) as f64 } else { 0.5 };
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v / top.max(1e-9));
    let line: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
    let dots: String = points.iter().map(|(t, v)| format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"/>", x(*t), y(*v))).collect();
    format!(
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <line class=\"target\" x1=\"{pad}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\"/><polyline points=\"{}\"/>{dots}\
         <text x=\"{pad}\" y=\"{:.1}\">target {}</text></svg></figure>",
        esc(title),
        w - pad,
        line.join(" "),
        y(target) - 4.0,
        dur(Some(target)),
        ty = y(target),
    )
}

pub fn html(r: &Report) -> String {
    let md_tables = markdown(r);
    let mut body = String::new();
    for c in &r.classes {
        let drills: Vec<&crate::model::DrillReport> = r.protocol.iter().filter(|d| d.class == c.name).collect();
        let rto: Vec<(i64, f64)> = drills.iter().map(|d| (d.started.timestamp(), d.rto_seconds)).collect();
        let rpo: Vec<(i64, f64)> = drills.iter().filter_map(|d| Some((d.started.timestamp(), d.rpo_seconds?))).collect();
        let state = if c.rpo_met && c.rto_met != Some(false) { "ok" } else { "missed" };
        let _ = write!(
            body,
            "<section class=\"class {state}\" data-class=\"{}\"><h2>{} <small>{}</small></h2><div class=\"charts\">{}{}</div></section>",
            esc(&c.name),
            esc(&c.name),
            esc(&c.description),
            chart(&format!("Measured RTO of {}", c.name), &rto, c.rto_target as f64),
            chart(&format!("Achieved RPO of {}", c.name), &rpo, c.rpo_target as f64),
        );
    }
    format!(
        include_str!("report.html"),
        generated = r.generated.format("%Y-%m-%d %H:%M UTC"),
        classes = body,
        tables = tables_html(&md_tables)
    )
}

/// The Markdown tables as HTML tables (headings and pipes, nothing more).
fn tables_html(md: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let _ = write!(out, "<h2>{}</h2>", esc(h));
        } else if line.starts_with("|---") {
            continue;
        } else if let Some(row) = line.strip_prefix('|') {
            let cells: Vec<&str> = row.trim_end_matches('|').split(" | ").map(str::trim).collect();
            let tag = if in_table { "td" } else { "th" };
            if !in_table {
                out += "<table>";
                in_table = true;
            }
            let _ = write!(out, "<tr>{}</tr>", cells.iter().map(|c| format!("<{tag}>{}</{tag}>", esc(c))).collect::<String>());
        } else if in_table {
            out += "</table>";
            in_table = false;
        }
    }
    if in_table {
        out += "</table>";
    }
    out
}
