//! `forget`: which snapshots go, decided apart from deleting them.
//!
//! [`plan`] turns the repository's snapshots and holds, with either a
//! retention policy ([`crate::retention`]) or the snapshots the user named,
//! into a [`Plan`] a caller can show before anything is removed; [`execute`]
//! removes what a plan says. A source may add groups of its own to a plan
//! before it runs (WAL no remaining base backup needs).

use std::collections::HashMap;

use chrono::TimeZone;

use crate::repo::Removal;
use crate::retention::{GroupBy, Policy, Verdict};
use crate::select::SnapshotFilter;
use crate::{Error, Id, IdSet, Repository, Result, Snapshot};

/// What a forget decides over: every snapshot, oldest first, and the legal
/// holds on them (snapshot id to `reason (by)`).
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub snapshots: Vec<Snapshot>,
    pub held: HashMap<Id, String>,
    /// Snapshots whose files are damaged: no policy can judge them, but
    /// they may be forgotten by id.
    pub unreadable: Vec<Id>,
}

impl Inventory {
    pub async fn load(repo: &Repository) -> Result<Inventory> {
        let held = crate::holds::holds(repo).await?.into_iter().map(|h| (h.snapshot, format!("{} ({})", h.reason, h.by))).collect();
        let snapshots = repo.snapshots().await?;
        Ok(Inventory { snapshots, held, unreadable: repo.unreadable_snapshots().into_iter().map(|(id, _)| id).collect() })
    }

    /// The one unreadable snapshot whose id `spec` begins.
    fn unreadable(&self, spec: &str) -> Option<Id> {
        let mut found = self.unreadable.iter().filter(|id| id.to_string().starts_with(spec));
        found.next().filter(|_| found.next().is_none() && spec.len() >= 4).copied()
    }
}

/// What the user asked to forget.
#[derive(Clone, Copy, Debug)]
pub enum Choice<'a> {
    /// The snapshots `filter` passes (named archive pieces left out), grouped
    /// by `by`, each group under `policy`. A policy that would empty a group
    /// is refused unless `allow_empty`.
    Policy { filter: &'a SnapshotFilter, policy: &'a Policy, by: GroupBy, allow_empty: bool },
    /// These snapshot specs (`latest` the newest `filter` passes, ids, id
    /// prefixes), all removed; a held one refuses the whole forget.
    Given { specs: &'a [String], filter: &'a SnapshotFilter },
}

/// One group of a plan: what stays (with the rules that keep it) and what goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub key: String,
    pub keep: Vec<Verdict>,
    pub remove: Vec<Snapshot>,
}

/// Every group's verdicts, in the order they are shown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub groups: Vec<Group>,
    /// Unreadable snapshots given by id, removed too.
    pub unreadable: Vec<Id>,
}

impl Plan {
    /// The snapshots the plan removes.
    pub fn removed(&self) -> IdSet {
        self.groups.iter().flat_map(|g| &g.remove).map(|s| s.id).chain(self.unreadable.iter().copied()).collect()
    }
}

/// Decide what `choice` forgets among `inv`'s snapshots; calendar rules in
/// time zone `tz`. Held snapshots are kept whatever a policy says.
pub fn plan<Tz: TimeZone>(inv: &Inventory, choice: Choice<'_>, tz: &Tz) -> Result<Plan> {
    match choice {
        Choice::Policy { filter, policy, by, allow_empty } => {
            let chosen = crate::select::filter(inv.snapshots.clone(), filter, false);
            let groups = crate::retention::plan(chosen, policy, by, tz, &inv.held, allow_empty)?;
            let groups = groups
                .into_iter()
                .map(|g| {
                    let (keep, gone): (Vec<Verdict>, Vec<Verdict>) = g.verdicts.into_iter().partition(Verdict::keep);
                    Group { key: g.key, keep, remove: gone.into_iter().map(|v| v.snapshot).collect() }
                })
                .collect();
            Ok(Plan { groups, unreadable: Vec::new() })
        }
        Choice::Given { specs, filter } => {
            let (mut remove, mut unreadable) = (Vec::with_capacity(specs.len()), Vec::new());
            for spec in specs {
                let (id, s) = match crate::select::select(inv.snapshots.clone(), spec, filter) {
                    Ok(s) => (s.id, Some(s)),
                    Err(Error::NoSnapshot(_)) if let Some(id) = inv.unreadable(spec) => (id, None),
                    Err(e) => return Err(e),
                };
                if let Some(reason) = inv.held.get(&id) {
                    return Err(Error::Invalid(format!("snapshot {} is under legal hold: {reason}; release it first", id.short())));
                }
                match s {
                    Some(s) => remove.push(s),
                    None => unreadable.push(id),
                }
            }
            Ok(Plan { groups: vec![Group { key: "given".into(), keep: Vec::new(), remove }], unreadable })
        }
    }
}

/// Refuse removal in an append-only repository: the caller asks before
/// it plans, so such a forget refuses before any work.
pub fn allowed(repo: &Repository) -> Result<()> {
    if repo.config().append_only {
        return Err(Error::AppendOnly("forget".into()));
    }
    Ok(())
}

/// Remove what `plan` says, once [`allowed`] said yes. A snapshot the
/// storage's Object Lock still protects stays and is listed in the
/// result's `locked`.
pub async fn execute(repo: &Repository, plan: &Plan) -> Result<Removal> {
    let ids: Vec<Id> = plan.groups.iter().flat_map(|g| &g.remove).map(|s| s.id).chain(plan.unreadable.iter().copied()).collect();
    repo.remove_snapshots(&ids).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC: chrono::FixedOffset = chrono::FixedOffset::east_opt(0).unwrap();

    fn inventory() -> Inventory {
        let mut snaps: Vec<Snapshot> = ["2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"]
            .iter()
            .map(|t| Snapshot::sample(t, "h", &["/data"], &[]))
            .collect();
        let mut wal = Snapshot::sample("2026-01-02T12:00:00+00:00", "h", &["/data"], &[]);
        wal.name = Some("pg-wal/000000010000000000000001".into());
        snaps.push(wal);
        let held = [(snaps[0].id, "audit (ann@h)".to_string())].into();
        Inventory { snapshots: snaps, held, unreadable: Vec::new() }
    }

    #[test]
    fn a_policy_plan_keeps_held_snapshots_and_leaves_archive_pieces_out() {
        let inv = inventory();
        let policy = Policy { last: Some(1), ..Policy::default() };
        let filter = SnapshotFilter::default();
        let choice = Choice::Policy { filter: &filter, policy: &policy, by: GroupBy::default(), allow_empty: false };
        let p = plan(&inv, choice, &UTC).unwrap();
        assert_eq!(p.groups.len(), 1);
        let g = &p.groups[0];
        assert_eq!(g.key, "host=h paths=/data");
        let kept: Vec<(Id, Vec<String>)> = g.keep.iter().map(|v| (v.snapshot.id, v.reasons.clone())).collect();
        assert_eq!(
            kept,
            [
                (inv.snapshots[2].id, vec!["last snapshot".to_string()]),
                (inv.snapshots[0].id, vec!["legal hold: audit (ann@h)".to_string()])
            ]
        );
        assert_eq!(g.remove, [inv.snapshots[1].clone()]);
        assert_eq!(p.removed(), [inv.snapshots[1].id].into_iter().collect());
    }

    #[test]
    fn given_snapshots_are_removed_unless_held() {
        let inv = inventory();
        let given = [inv.snapshots[1].id.to_hex()[..8].to_string(), "latest".to_string()];
        let p = plan(&inv, Choice::Given { specs: &given, filter: &SnapshotFilter::default() }, &UTC).unwrap();
        assert_eq!(
            p.groups,
            [Group { key: "given".into(), keep: vec![], remove: vec![inv.snapshots[1].clone(), inv.snapshots[2].clone()] }]
        );
        let held = [inv.snapshots[0].id.to_hex()];
        let err = plan(&inv, Choice::Given { specs: &held, filter: &SnapshotFilter::default() }, &UTC).unwrap_err().to_string();
        assert_eq!(err, format!("snapshot {} is under legal hold: audit (ann@h); release it first", inv.snapshots[0].id.short()));
        assert!(matches!(
            plan(&inv, Choice::Given { specs: &["ffffffff".to_string()], filter: &SnapshotFilter::default() }, &UTC),
            Err(Error::NoSnapshot(_))
        ));
    }

    /// `latest` with a filter is the newest snapshot the filter passes, as
    /// restore and copy take it: it removed the newest of any host.
    #[test]
    fn given_latest_is_the_newest_the_filter_passes() {
        let mut inv = inventory();
        inv.snapshots.push(Snapshot::sample("2026-01-04T12:00:00+00:00", "other", &["/data"], &[]));
        let filter = SnapshotFilter { hosts: vec!["h".into()], ..SnapshotFilter::default() };
        let p = plan(&inv, Choice::Given { specs: &["latest".to_string()], filter: &filter }, &UTC).unwrap();
        assert_eq!(p.removed(), [inv.snapshots[2].id].into_iter().collect());
        let none = SnapshotFilter { hosts: vec!["nosuch".into()], ..SnapshotFilter::default() };
        let err = plan(&inv, Choice::Given { specs: &["latest".to_string()], filter: &none }, &UTC).unwrap_err();
        assert_eq!(err.to_string(), "no snapshot matches host nosuch");
    }

    /// A snapshot whose file is damaged can be judged by no policy, but
    /// may be forgotten by its id (a prefix of at least four digits).
    #[test]
    fn an_unreadable_snapshot_is_forgotten_by_id_only() {
        let mut inv = inventory();
        // A first byte no readable snapshot's (random) id begins with.
        let byte = (0u8..=255).find(|b| inv.snapshots.iter().all(|s| s.id.0[0] != *b)).unwrap();
        let lost = Id([byte; 32]);
        inv.unreadable.push(lost);
        let p = plan(&inv, Choice::Given { specs: &[format!("{byte:02x}{byte:02x}")], filter: &SnapshotFilter::default() }, &UTC).unwrap();
        assert_eq!((p.unreadable.clone(), p.removed()), (vec![lost], [lost].into_iter().collect()));
        let short = [format!("{byte:02x}")];
        assert!(
            matches!(plan(&inv, Choice::Given { specs: &short, filter: &SnapshotFilter::default() }, &UTC), Err(Error::NoSnapshot(_))),
            "too short a prefix"
        );
        let policy = Policy { last: Some(1), ..Policy::default() };
        let filter = SnapshotFilter::default();
        let choice = Choice::Policy { filter: &filter, policy: &policy, by: GroupBy::default(), allow_empty: false };
        assert!(!plan(&inv, choice, &UTC).unwrap().removed().contains(&lost));
    }

    #[test]
    fn an_empty_policy_and_an_emptied_group_are_refused() {
        let inv = inventory();
        let filter = SnapshotFilter::default();
        let empty = Policy::default();
        let choice = Choice::Policy { filter: &filter, policy: &empty, by: GroupBy::default(), allow_empty: true };
        assert!(matches!(plan(&inv, choice, &UTC), Err(Error::Invalid(_))));
        let mut unheld = inv.clone();
        unheld.held.clear();
        let never = Policy { tags: vec![vec!["never".into()]], ..Policy::default() };
        let choice = Choice::Policy { filter: &filter, policy: &never, by: GroupBy::default(), allow_empty: false };
        assert!(plan(&unheld, choice, &UTC).is_err());
        let choice = Choice::Policy { filter: &filter, policy: &never, by: GroupBy::default(), allow_empty: true };
        assert_eq!(plan(&unheld, choice, &UTC).unwrap().removed().len(), 3);
    }
}
