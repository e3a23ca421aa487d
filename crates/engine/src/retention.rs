//! Retention: which snapshots a policy keeps, and why.
//!
//! The rules are restic's, so existing policies carry over: walking a group's
//! snapshots from newest to oldest, `--keep-last N` keeps the first N, and
//! each calendar rule (`hourly`, `daily`, `weekly`, `monthly`, `yearly`)
//! keeps the newest snapshot of each of the N most recent periods that have
//! one. `--keep-within D` keeps everything up to D older than the newest
//! snapshot; `--keep-within-daily D` and friends keep the newest of each
//! period within D. Periods are calendar periods in the given time zone
//! (ISO weeks for `weekly`), so a snapshot at 23:30 local time counts for its
//! local day.

use chrono::{DateTime, Datelike, FixedOffset, Months, TimeDelta, TimeZone, Timelike};

use crate::{Error, Result, Snapshot};

/// A calendar period length for bucketing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub const ALL: [Period; 5] = [Period::Hourly, Period::Daily, Period::Weekly, Period::Monthly, Period::Yearly];

    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// The period a moment falls in, as a comparable number.
    fn bucket<Tz: TimeZone>(self, t: &DateTime<Tz>) -> i64 {
        let (y, m, d, h) = (i64::from(t.year()), i64::from(t.month()), i64::from(t.day()), i64::from(t.hour()));
        match self {
            Period::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Period::Daily => (y * 100 + m) * 100 + d,
            Period::Weekly => {
                let w = t.iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Monthly => y * 100 + m,
            Period::Yearly => y,
        }
    }
}

/// A span such as `2y6m`, `30d` or `36h`: calendar years and months, days
/// and hours, counted back from the newest snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Span {
    pub fn parse(text: &str) -> Result<Span> {
        let bad = || Error::Invalid(format!("cannot read duration {text:?} (use e.g. 1y6m, 30d or 36h)"));
        let mut span = Span::default();
        let mut digits = String::new();
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u32 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            match c {
                'y' => span.years += n,
                'm' => span.months += n,
                'd' => span.days += n,
                'h' => span.hours += n,
                _ => return Err(bad()),
            }
        }
        if !digits.is_empty() || span == Span::default() {
            return Err(bad());
        }
        Ok(span)
    }

    /// The oldest moment still inside the span ending at `end`.
    fn start(&self, end: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        let months = Months::new(self.years * 12 + self.months);
        let t = end.checked_sub_months(months).unwrap_or(DateTime::<chrono::Utc>::MIN_UTC.fixed_offset());
        t - TimeDelta::days(i64::from(self.days)) - TimeDelta::hours(i64::from(self.hours))
    }
}

/// A retention policy. Counts of `None` are unset; `u32::MAX` means unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub last: Option<u32>,
    pub periods: Vec<(Period, u32)>,
    pub within: Option<Span>,
    pub within_periods: Vec<(Period, Span)>,
    /// Keep every snapshot carrying all tags of one of these lists.
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last.is_none() && self.periods.is_empty() && self.within.is_none() && self.within_periods.is_empty() && self.tags.is_empty()
    }
}

/// The verdict on one snapshot: kept with the rules that keep it, or not.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub snapshot: Snapshot,
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Apply `policy` to one group of snapshots; verdicts come newest first.
///
/// A partial snapshot ([`Snapshot::is_partial`]) never takes a whole one's
/// place: `last` counts whole snapshots, keeping (at most as many) partial
/// ones among them; a period's snapshot is its newest whole one, a partial
/// one only in a period that has no whole one; and the newest whole
/// snapshot stays while partial ones are newer, however long they run.
pub fn apply<Tz: TimeZone>(mut snaps: Vec<Snapshot>, policy: &Policy, tz: &Tz) -> Vec<Verdict> {
    snaps.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let Some(newest) = snaps.first().map(|s| s.time) else { return Vec::new() };
    let mut counters: Vec<(Period, u32, Option<i64>)> = policy.periods.iter().map(|&(p, n)| (p, n, None)).collect();
    // Each period's buckets that hold a whole snapshot.
    let whole: Vec<std::collections::HashSet<i64>> = policy
        .periods
        .iter()
        .map(|(p, _)| snaps.iter().filter(|s| !s.is_partial()).map(|s| p.bucket(&s.time.with_timezone(tz))).collect())
        .collect();
    let mut within_last: Vec<Option<i64>> = vec![None; policy.within_periods.len()];
    let mut verdicts = Vec::with_capacity(snaps.len());
    let (mut whole_seen, mut partial_kept, mut partial_newer) = (0u64, 0u64, false);
    for snap in snaps {
        let local = snap.time.with_timezone(tz);
        let mut reasons = Vec::new();
        let partial = snap.is_partial();
        if policy.last.is_some_and(|n| whole_seen < u64::from(n) && (!partial || partial_kept < u64::from(n))) {
            reasons.push("last snapshot".to_string());
            partial_kept += u64::from(partial);
        }
        if !partial && whole_seen == 0 && partial_newer {
            reasons.push("newest whole snapshot".to_string());
        }
        whole_seen += u64::from(!partial);
        partial_newer |= partial;
        for ((period, left, last), whole) in counters.iter_mut().zip(&whole) {
            let b = period.bucket(&local);
            if *left > 0 && *last != Some(b) && (!snap.is_partial() || !whole.contains(&b)) {
                *last = Some(b);
                *left = left.saturating_sub(1);
                reasons.push(format!("{} snapshot", period.name()));
            }
        }
        if policy.within.is_some_and(|s| snap.time >= s.start(newest)) {
            reasons.push("within the keep-within span".to_string());
        }
        for ((period, span), last) in policy.within_periods.iter().zip(within_last.iter_mut()) {
            let b = period.bucket(&local);
            if snap.time >= span.start(newest) && *last != Some(b) {
                *last = Some(b);
                reasons.push(format!("{} within span", period.name()));
            }
        }
        for tags in &policy.tags {
            if tags.iter().all(|t| snap.tags.contains(t)) {
                reasons.push(format!("tagged {}", tags.join(",")));
            }
        }
        verdicts.push(Verdict { snapshot: snap, reasons });
    }
    verdicts
}

/// What snapshots are grouped by before a policy applies to each group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy { host: true, paths: true, tags: false }
    }
}

impl GroupBy {
    /// `host,paths,tags` in any combination; empty for one group.
    pub fn parse(text: &str) -> Result<GroupBy> {
        let mut g = GroupBy { host: false, paths: false, tags: false };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "source" => g.paths = true,
                "tags" => g.tags = true,
                other => return Err(Error::Invalid(format!("cannot group by {other:?} (host, paths, tags)"))),
            }
        }
        Ok(g)
    }

    /// The group a snapshot belongs to, readable: `host=db1 paths=/var/lib`.
    /// A data source without paths is grouped by its URL.
    pub fn key(&self, s: &Snapshot) -> String {
        let mut parts = Vec::new();
        if self.host {
            parts.push(format!("host={}", s.hostname));
        }
        if self.paths {
            let mut paths = s.paths.clone();
            if paths.is_empty() {
                paths.extend(s.source.url.clone());
            }
            paths.sort();
            parts.push(format!("paths={}", paths.join(",")));
        }
        if self.tags {
            let mut tags = s.tags.clone();
            tags.sort();
            parts.push(format!("tags={}", tags.join(",")));
        }
        parts.join(" ")
    }
}

/// One group's verdicts.
#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub key: String,
    pub verdicts: Vec<Verdict>,
}

/// Apply `policy` per group. Held snapshots are kept whatever the policy
/// says (`held` maps a snapshot id to its hold reason). A policy that would
/// empty a group is refused unless `allow_empty`: removing every restore
/// point of a source is more often a typo than an intention.
pub fn plan<Tz: TimeZone>(
    snaps: Vec<Snapshot>,
    policy: &Policy,
    by: GroupBy,
    tz: &Tz,
    held: &std::collections::HashMap<crate::Id, String>,
    allow_empty: bool,
) -> Result<Vec<GroupPlan>> {
    if policy.is_empty() {
        return Err(Error::Invalid("no retention rule given (e.g. --keep-daily 7); nothing was removed".into()));
    }
    let mut groups: std::collections::BTreeMap<String, Vec<Snapshot>> = std::collections::BTreeMap::new();
    for s in snaps {
        groups.entry(by.key(&s)).or_default().push(s);
    }
    let mut plans = Vec::new();
    for (key, snaps) in groups {
        let mut verdicts = apply(snaps, policy, tz);
        for v in &mut verdicts {
            if let Some(reason) = held.get(&v.snapshot.id) {
                v.reasons.push(format!("legal hold: {reason}"));
            }
        }
        if !allow_empty && !verdicts.iter().any(Verdict::keep) {
            return Err(Error::Invalid(format!(
                "the policy would remove all {} snapshots of group {key:?}; nothing was removed (pass --allow-empty to allow it)",
                verdicts.len()
            )));
        }
        plans.push(GroupPlan { key, verdicts });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id;

    fn snap(at: &str, tags: &[&str]) -> Snapshot {
        Snapshot::sample(at, "h", &["/data"], tags)
    }

    /// Times of the kept snapshots, newest first.
    fn kept(snaps: Vec<Snapshot>, policy: &Policy, tz: &FixedOffset) -> Vec<String> {
        apply(snaps, policy, tz).into_iter().filter(Verdict::keep).map(|v| v.snapshot.time.to_rfc3339()).collect()
    }

    fn hourly_series(hours: u32) -> Vec<Snapshot> {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:15:00+00:00").unwrap();
        (0..hours).map(|h| snap(&(start + TimeDelta::hours(i64::from(h))).to_rfc3339(), &[])).collect()
    }

    const UTC: FixedOffset = FixedOffset::east_opt(0).unwrap();

    #[test]
    fn keep_last() {
        let p = Policy { last: Some(2), ..Policy::default() };
        assert_eq!(kept(hourly_series(5), &p, &UTC), ["2026-01-01T04:15:00+00:00", "2026-01-01T03:15:00+00:00"]);
    }

    /// A partial snapshot never takes a whole one's place: `last` counts
    /// whole ones and keeps the partial ones among them; a day's snapshot
    /// is its newest whole one, a partial one only on a day without one.
    #[test]
    fn a_partial_snapshot_never_takes_a_whole_ones_place() {
        let partial = |at: &str| {
            let mut s = snap(at, &[]);
            s.errors.push(crate::snapshot::FileError { path: "/data/locked".into(), error: "Permission denied".into() });
            s
        };
        let series = || {
            vec![
                snap("2026-01-01T01:00:00+00:00", &[]),
                snap("2026-01-02T01:00:00+00:00", &[]),
                partial("2026-01-03T01:00:00+00:00"),
                partial("2026-01-04T01:00:00+00:00"),
                snap("2026-01-04T00:30:00+00:00", &[]),
                snap("2026-01-05T01:00:00+00:00", &[]),
            ]
        };
        let last = Policy { last: Some(3), ..Policy::default() };
        let days = ["01-05T01:00", "01-04T01:00", "01-04T00:30", "01-03T01:00", "01-02T01:00"];
        let at = |d: &[&str]| d.iter().map(|d| format!("2026-{d}:00+00:00")).collect::<Vec<_>>();
        assert_eq!(kept(series(), &last, &UTC), at(&days));
        let daily = Policy { periods: vec![(Period::Daily, 4)], ..Policy::default() };
        assert_eq!(kept(series(), &daily, &UTC), at(&["01-05T01:00", "01-04T00:30", "01-03T01:00", "01-02T01:00"]));
        let refused = Snapshot {
            source: crate::SourceInfo {
                consistency: [("refused".into(), serde_json::json!(["secrets: forbidden"]))].into(),
                ..Default::default()
            },
            ..snap("2026-01-06T01:00:00+00:00", &[])
        };
        assert!(refused.is_partial() && !snap("2026-01-06T01:00:00+00:00", &[]).is_partial());
    }

    /// A source partial for longer than the policy looks back keeps its
    /// newest whole snapshot, and no more partial ones than `last` says.
    #[test]
    fn a_run_of_partial_snapshots_keeps_the_newest_whole_one_and_is_bounded() {
        let partial = |day: u32| {
            let mut s = snap(&format!("2026-01-{day:02}T01:00:00+00:00"), &[]);
            s.errors.push(crate::snapshot::FileError { path: "/data/locked".into(), error: "Permission denied".into() });
            s
        };
        let series = || {
            let mut s = vec![snap("2026-01-01T01:00:00+00:00", &[]), snap("2026-01-02T01:00:00+00:00", &[])];
            s.extend((3..=12).map(partial));
            s
        };
        let at = |d: &[u32]| d.iter().map(|d| format!("2026-01-{d:02}T01:00:00+00:00")).collect::<Vec<_>>();
        let last = Policy { last: Some(3), ..Policy::default() };
        assert_eq!(kept(series(), &last, &UTC), at(&[12, 11, 10, 2, 1]));
        let daily = Policy { periods: vec![(Period::Daily, 4)], ..Policy::default() };
        assert_eq!(kept(series(), &daily, &UTC), at(&[12, 11, 10, 9, 2]));
        let verdicts = apply(series(), &daily, &UTC);
        let newest_whole = verdicts.iter().find(|v| v.snapshot.time.to_rfc3339().starts_with("2026-01-02")).unwrap();
        assert_eq!(newest_whole.reasons, ["newest whole snapshot"]);
    }

    #[test]
    fn keep_hourly_keeps_the_newest_of_each_hour() {
        let mut s = hourly_series(3);
        s.push(snap("2026-01-01T02:45:00+00:00", &[]));
        let p = Policy { periods: vec![(Period::Hourly, 2)], ..Policy::default() };
        assert_eq!(kept(s, &p, &UTC), ["2026-01-01T02:45:00+00:00", "2026-01-01T01:15:00+00:00"]);
    }

    #[test]
    fn keep_daily_follows_the_time_zone() {
        // 23:30 UTC on the 1st is already the 2nd in Berlin (UTC+1).
        let s =
            vec![snap("2026-01-01T12:00:00+00:00", &[]), snap("2026-01-01T23:30:00+00:00", &[]), snap("2026-01-02T10:00:00+00:00", &[])];
        let p = Policy { periods: vec![(Period::Daily, 5)], ..Policy::default() };
        assert_eq!(kept(s.clone(), &p, &UTC), ["2026-01-02T10:00:00+00:00", "2026-01-01T23:30:00+00:00"]);
        let berlin = FixedOffset::east_opt(3600).unwrap();
        assert_eq!(kept(s, &p, &berlin), ["2026-01-02T10:00:00+00:00", "2026-01-01T12:00:00+00:00"]);
    }

    #[test]
    fn keep_weekly_uses_iso_weeks() {
        // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2);
        // 2025-12-29 is the Monday of ISO week 1 of 2026.
        let s =
            vec![snap("2025-12-29T10:00:00+00:00", &[]), snap("2026-01-04T10:00:00+00:00", &[]), snap("2026-01-05T10:00:00+00:00", &[])];
        let p = Policy { periods: vec![(Period::Weekly, 10)], ..Policy::default() };
        assert_eq!(kept(s, &p, &UTC), ["2026-01-05T10:00:00+00:00", "2026-01-04T10:00:00+00:00"]);
    }

    #[test]
    fn keep_monthly_and_yearly() {
        let s = vec![
            snap("2024-12-31T10:00:00+00:00", &[]),
            snap("2025-06-01T10:00:00+00:00", &[]),
            snap("2025-06-20T10:00:00+00:00", &[]),
            snap("2025-07-02T10:00:00+00:00", &[]),
        ];
        let p = Policy { periods: vec![(Period::Monthly, 2)], ..Policy::default() };
        assert_eq!(kept(s.clone(), &p, &UTC), ["2025-07-02T10:00:00+00:00", "2025-06-20T10:00:00+00:00"]);
        let p = Policy { periods: vec![(Period::Yearly, 5)], ..Policy::default() };
        assert_eq!(kept(s, &p, &UTC), ["2025-07-02T10:00:00+00:00", "2024-12-31T10:00:00+00:00"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        let p = Policy { within: Some(Span::parse("2h").unwrap()), ..Policy::default() };
        assert_eq!(kept(hourly_series(5), &p, &UTC).len(), 3);
        let p = Policy { within_periods: vec![(Period::Daily, Span::parse("1d").unwrap())], ..Policy::default() };
        let mut s = hourly_series(30);
        s.push(snap("2025-12-01T00:00:00+00:00", &[]));
        assert_eq!(kept(s, &p, &UTC), ["2026-01-02T05:15:00+00:00", "2026-01-01T23:15:00+00:00"]);
    }

    #[test]
    fn keep_tag_and_reasons() {
        let s = vec![snap("2026-01-01T00:00:00+00:00", &["legal", "q1"]), snap("2026-01-02T00:00:00+00:00", &["q1"])];
        let p = Policy { tags: vec![vec!["legal".into(), "q1".into()]], last: Some(1), ..Policy::default() };
        let v = apply(s, &p, &UTC);
        assert_eq!(v[0].reasons, ["last snapshot"]);
        assert_eq!(v[1].reasons, ["tagged legal,q1"]);
    }

    #[test]
    fn groups_holds_and_the_empty_guard() {
        let mut a = snap("2026-01-01T00:00:00+00:00", &[]);
        a.hostname = "a".into();
        let b = snap("2026-01-02T00:00:00+00:00", &[]);
        let held: std::collections::HashMap<Id, String> = [(a.id, "audit 2026".to_string())].into();
        let p = Policy { tags: vec![vec!["never".into()]], ..Policy::default() };
        let err = plan(vec![a.clone(), b.clone()], &p, GroupBy::default(), &UTC, &held, false).unwrap_err().to_string();
        assert_eq!(
            err,
            "the policy would remove all 1 snapshots of group \"host=h paths=/data\"; nothing was removed (pass --allow-empty to allow it)"
        );
        let plans = plan(vec![a, b], &p, GroupBy::default(), &UTC, &held, true).unwrap();
        assert_eq!(plans.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(), ["host=a paths=/data", "host=h paths=/data"]);
        assert_eq!(plans[0].verdicts[0].reasons, ["legal hold: audit 2026"]);
        assert!(!plans[1].verdicts[0].keep());
        assert!(plan(vec![], &Policy::default(), GroupBy::default(), &UTC, &held, true).is_err());
        assert_eq!(GroupBy::parse("host,tags").unwrap(), GroupBy { host: true, paths: false, tags: true });
    }

    #[test]
    fn spans_parse() {
        assert_eq!(Span::parse("1y2m3d4h").unwrap(), Span { years: 1, months: 2, days: 3, hours: 4 });
        assert!(Span::parse("5").is_err() && Span::parse("3w").is_err() && Span::parse("").is_err());
        let end = DateTime::parse_from_rfc3339("2026-03-31T00:00:00+00:00").unwrap();
        assert_eq!(Span::parse("1m").unwrap().start(end).to_rfc3339(), "2026-02-28T00:00:00+00:00");
    }
}
