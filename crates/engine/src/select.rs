//! Which snapshot a command means, by restic's rules, in one place: every
//! command that takes a snapshot argument (restore, ls, dump, diff, copy,
//! stats, hold, the API) resolves it here.
//!
//! `latest` is the newest snapshot that passes the filters; an id or a
//! unique id prefix names one snapshot whatever the filters say (as in
//! restic); `SPEC:PATH` names a folder inside it (restic's subfolder form).

use std::path::Path;

use serde::Serialize;

use crate::retention::GroupBy;
use crate::{Error, Result, Snapshot};

/// restic's `--host`, `--tag` and `--path` filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotFilter {
    /// Any of these hosts; empty for any host.
    pub hosts: Vec<String>,
    /// Any of these entries, each a comma-separated list of tags the
    /// snapshot must all carry (`--tag a,b` both, `--tag a --tag b` either).
    pub tags: Vec<String>,
    /// Paths the snapshot must all have been taken of.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.paths.is_empty()
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        let host = self.hosts.is_empty() || self.hosts.contains(&s.hostname);
        let tags = self.tags.is_empty()
            || self.tags.iter().any(|set| set.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|t| s.tags.iter().any(|x| x == t)));
        let paths = self.paths.iter().all(|p| s.paths.iter().any(|sp| Path::new(sp) == Path::new(p)));
        host && tags && paths
    }

    /// What the filter asks for, as the "no snapshot matches …" error says it:
    /// `host h1 or h2, tag a,b, path /srv`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, values) in [("host", &self.hosts), ("tag", &self.tags), ("path", &self.paths)] {
            if !values.is_empty() {
                parts.push(format!("{what} {}", values.join(" or ")));
            }
        }
        parts.join(", ")
    }
}

/// A snapshot argument split into the snapshot and the folder inside it:
/// `latest:/srv/www` is (`latest`, `/srv/www`).
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((snap, folder)) if !folder.is_empty() => (snap, Some(folder)),
        Some((snap, _)) => (snap, None),
        None => (spec, None),
    }
}

/// The snapshot `spec` (without a subfolder) names among `snaps`, oldest
/// first. Named pieces of continuous archives (WAL) are never `latest`.
pub fn select(snaps: Vec<Snapshot>, spec: &str, filter: &SnapshotFilter) -> Result<Snapshot> {
    if spec == "latest" {
        return snaps
            .into_iter()
            .rfind(|s| s.name.is_none() && filter.matches(s))
            .ok_or_else(|| if filter.is_empty() { Error::NoSnapshot(spec.to_string()) } else { Error::NoMatch(filter.describe()) });
    }
    if spec.is_empty() {
        return Err(Error::NoSnapshot(String::new()));
    }
    let spec_lc = spec.to_ascii_lowercase();
    let mut found = snaps.into_iter().filter(|s| s.id.to_hex().starts_with(&spec_lc));
    match (found.next(), found.next()) {
        (Some(s), None) => Ok(s),
        (Some(_), Some(_)) => Err(Error::AmbiguousSnapshot(spec.to_string())),
        _ => Err(Error::NoSnapshot(spec.to_string())),
    }
}

/// The snapshots that pass `filter`, leaving out named archive pieces unless `all`.
pub fn filter(snaps: Vec<Snapshot>, filter: &SnapshotFilter, all: bool) -> Vec<Snapshot> {
    snaps.into_iter().filter(|s| (all || s.name.is_none()) && filter.matches(s)).collect()
}

/// A group of `snapshots --group-by`, keyed as restic's JSON keys it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupKey {
    pub hostname: String,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

/// Snapshots (oldest first) grouped by `by`, groups in order of their first
/// snapshot; with `latest`, only the newest N of each host and path set in a group.
pub fn group(snaps: Vec<Snapshot>, by: &GroupBy, latest: Option<usize>) -> Vec<(GroupKey, Vec<Snapshot>)> {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let mut groups: Vec<(GroupKey, Vec<Snapshot>)> = Vec::new();
    for s in snaps {
        let key = GroupKey {
            hostname: if by.host { s.hostname.clone() } else { String::new() },
            paths: by.paths.then(|| sorted(s.paths.clone())),
            tags: by.tags.then(|| sorted(s.tags.clone())),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    if let Some(n) = latest {
        for (_, list) in &mut groups {
            *list = newest_per_host_and_paths(std::mem::take(list), n);
        }
    }
    groups
}

/// The newest `n` snapshots of each host and path set, oldest first.
pub fn newest_per_host_and_paths(snaps: Vec<Snapshot>, n: usize) -> Vec<Snapshot> {
    let mut kept: Vec<Snapshot> = Vec::new();
    for s in snaps.into_iter().rev() {
        let same = kept.iter().filter(|k| k.hostname == s.hostname && k.paths == s.paths).count();
        if same < n {
            kept.push(s);
        }
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id;

    fn snap(n: u8, host: &str, paths: &[&str], tags: &[&str]) -> Snapshot {
        Snapshot { id: Id([n; 32]), ..Snapshot::sample(&format!("2025-01-01T00:00:{n:02}Z"), host, paths, tags) }
    }

    fn repo() -> Vec<Snapshot> {
        vec![
            snap(1, "w1", &["/srv"], &["daily", "web"]),
            snap(2, "w2", &["/srv"], &["daily"]),
            snap(3, "w1", &["/etc"], &["web"]),
            snap(4, "w2", &["/etc", "/srv"], &[]),
        ]
    }

    fn f(hosts: &[&str], tags: &[&str], paths: &[&str]) -> SnapshotFilter {
        let own = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        SnapshotFilter { hosts: own(hosts), tags: own(tags), paths: own(paths) }
    }

    fn latest(filter: &SnapshotFilter) -> Result<u8> {
        select(repo(), "latest", filter).map(|s| s.id.0[0])
    }

    #[test]
    fn latest_is_the_newest_snapshot_that_passes_every_filter() {
        assert_eq!(latest(&f(&[], &[], &[])).unwrap(), 4);
        assert_eq!(latest(&f(&["w1"], &[], &[])).unwrap(), 3);
        assert_eq!(latest(&f(&["w1", "w2"], &[], &[])).unwrap(), 4);
        assert_eq!(latest(&f(&[], &["daily,web"], &[])).unwrap(), 1);
        assert_eq!(latest(&f(&[], &["daily"], &[])).unwrap(), 2);
        assert_eq!(latest(&f(&[], &["daily", "web"], &[])).unwrap(), 3);
        assert_eq!(latest(&f(&[], &[], &["/srv"])).unwrap(), 4);
        assert_eq!(latest(&f(&[], &[], &["/srv/"])).unwrap(), 4);
        assert_eq!(latest(&f(&["w1"], &[], &["/srv"])).unwrap(), 1);
        assert_eq!(latest(&f(&[], &[], &["/etc", "/srv"])).unwrap(), 4);
    }

    #[test]
    fn no_match_names_what_was_asked_for() {
        let err = |fl: &SnapshotFilter| latest(fl).unwrap_err().to_string();
        assert_eq!(err(&f(&["nosuchhost"], &[], &[])), "no snapshot matches host nosuchhost");
        assert_eq!(err(&f(&[], &["a,b", "c"], &[])), "no snapshot matches tag a,b or c");
        assert_eq!(err(&f(&["w1"], &[], &["/home"])), "no snapshot matches host w1, path /home");
        assert_eq!(select(Vec::new(), "latest", &SnapshotFilter::default()).unwrap_err().to_string(), "no snapshot matches \"latest\"");
    }

    #[test]
    fn ids_and_prefixes_name_one_snapshot_whatever_the_filters() {
        let hex = Id([3; 32]).to_hex();
        assert_eq!(select(repo(), &hex[..6], &f(&["w2"], &[], &[])).unwrap().id.0[0], 3);
        assert_eq!(select(repo(), &hex.to_uppercase(), &SnapshotFilter::default()).unwrap().id.0[0], 3);
        assert_eq!(select(repo(), "", &SnapshotFilter::default()).unwrap_err().to_string(), "no snapshot matches \"\"");
        let mut two = repo();
        two[1].id.0[0] = 3;
        two[1].id.0[31] = 9;
        assert_eq!(
            select(two, "03", &SnapshotFilter::default()).unwrap_err().to_string(),
            "snapshot id prefix \"03\" is ambiguous; give more digits"
        );
    }

    #[test]
    fn named_archive_pieces_are_never_latest() {
        let mut snaps = repo();
        snaps.push(Snapshot { name: Some("wal/000000010000000000000001".into()), ..snap(5, "w1", &[], &[]) });
        assert_eq!(select(snaps.clone(), "latest", &SnapshotFilter::default()).unwrap().id.0[0], 4);
        assert_eq!(filter(snaps.clone(), &SnapshotFilter::default(), false).len(), 4);
        assert_eq!(filter(snaps, &SnapshotFilter::default(), true).len(), 5);
    }

    #[test]
    fn specs_split_into_snapshot_and_subfolder() {
        assert_eq!(split_spec("latest"), ("latest", None));
        assert_eq!(split_spec("latest:/srv/www"), ("latest", Some("/srv/www")));
        assert_eq!(split_spec("4f2a9c1e:etc"), ("4f2a9c1e", Some("etc")));
        assert_eq!(split_spec("latest:"), ("latest", None));
    }

    #[test]
    fn groups_are_keyed_as_restic_keys_them_and_latest_keeps_n_per_host_and_paths() {
        let ids = |g: &[Snapshot]| g.iter().map(|s| s.id.0[0]).collect::<Vec<_>>();
        let by_host = group(repo(), &GroupBy::parse("host").unwrap(), None);
        assert_eq!(by_host.len(), 2);
        assert_eq!(by_host[0].0, GroupKey { hostname: "w1".into(), paths: None, tags: None });
        assert_eq!(ids(&by_host[0].1), [1, 3]);
        assert_eq!(ids(&by_host[1].1), [2, 4]);
        let by_tags = group(repo(), &GroupBy::parse("tags").unwrap(), None);
        assert_eq!(
            by_tags.iter().map(|(k, _)| k.tags.clone().unwrap()).collect::<Vec<_>>(),
            [vec!["daily", "web"], vec!["daily"], vec!["web"], vec![]]
        );
        let one = group(repo(), &GroupBy::parse("").unwrap(), Some(1));
        assert_eq!(one.len(), 1);
        assert_eq!(ids(&one[0].1), [1, 2, 3, 4]);
        let mut more = repo();
        more.push(snap(5, "w1", &["/srv"], &[]));
        assert_eq!(ids(&group(more, &GroupBy::parse("host").unwrap(), Some(1))[0].1), [3, 5]);
    }
}
