use serde_json::json;
use tresor_engine::{SourceInfo, Summary};

use super::*;

const MB16: u64 = 16 << 20;

fn at(minute: i64) -> DateTime<FixedOffset> {
    DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap().fixed_offset()
}

/// A snapshot of `kind` recording `point`, taken at minute `n`.
pub(crate) fn snap(n: u8, kind: &str, point: serde_json::Value) -> Snapshot {
    Snapshot {
        id: Id([n; 32]),
        time: at(n.into()),
        tree: Id([0; 32]),
        paths: vec![],
        hostname: "db".into(),
        username: "postgres".into(),
        uid: 0,
        gid: 0,
        tags: vec![],
        name: None,
        source: SourceInfo { kind: kind.into(), url: None, consistency: serde_json::from_value(point).unwrap() },
        parent: None,
        original: None,
        evidence: None,
        excludes: vec![],
        program_version: "test".into(),
        summary: None,
        errors: vec![],
    }
}

/// A base backup of cluster 7 on timeline 1 whose WAL runs from
/// segment `start` through `end`, complete at minute `ended`.
fn base(n: u8, start: u64, end: u64, ended: i64) -> Snapshot {
    let mut b = snap(
        n,
        PG_BASE,
        json!({"system_id": "7", "timeline": 1, "start_wal": pgwal::segment_name(1, start, MB16),
               "start_lsn": format!("0/{:X}", start * MB16), "end_lsn": format!("0/{:X}", end * MB16 + 0x100)}),
    );
    b.summary = Some(Summary { backup_end: Some(at(ended)), ..Default::default() });
    b
}

fn wal(n: u8, file: &str, last_commit_minute: Option<i64>) -> Snapshot {
    let mut point = json!({"system_id": "7", "file": file});
    if let Some(m) = last_commit_minute {
        point["last_commit"] = at(m).to_rfc3339().into();
    }
    snap(n, PG_WAL, point)
}

fn seg(tli: u32, segno: u64) -> String {
    pgwal::segment_name(tli, segno, MB16)
}

fn names(snaps: &[Snapshot]) -> Vec<&str> {
    snaps.iter().map(|s| point(s, "file").unwrap()).collect()
}

#[test]
fn a_base_backups_copy_takes_its_clusters_wal_along() {
    let all = vec![base(1, 3, 3, 2), wal(2, &seg(1, 3), None), wal(3, &seg(1, 4), None), snap(4, PG_WAL, json!({"system_id": "8"}))];
    let taken = |selected: &[Snapshot]| continuing_wal(selected, &all).iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(taken(&all[..1]), [all[1].id, all[2].id]);
    assert_eq!(taken(&[snap(5, "redis", json!({"system_id": "7"}))]), []);
}

#[test]
fn chains_are_per_cluster_and_skip_what_is_not_theirs() {
    let snaps = vec![
        base(1, 3, 3, 2),
        wal(2, &seg(1, 3), None),
        snap(3, PG_BASE, json!({"system_id": "8"})),
        snap(4, PG_WAL, json!({"system_id": "7", "file": "not-wal"})),
        snap(5, PG_WAL, json!({"file": seg(1, 4)})),
        snap(6, "redis", json!({"system_id": "7"})),
    ];
    let all = chains(&snaps);
    assert_eq!(all.keys().collect::<Vec<_>>(), ["7", "8"]);
    assert_eq!((all["7"].bases.len(), all["7"].wal.len()), (1, 1));
    assert_eq!(all["7"].wal[0].0.name, seg(1, 3));
    assert_eq!((all["8"].bases.len(), all["8"].wal.len()), (1, 0));
}

#[test]
fn a_recovery_works_on_the_cluster_asked_for_or_the_only_one() {
    let snaps = vec![base(1, 3, 3, 2), snap(2, PG_BASE, json!({"system_id": "8"}))];
    let all = chains(&snaps);
    assert_eq!(chain_of(&all, Some("8")).unwrap().bases[0].id, Id([2; 32]));
    assert_eq!(chain_of(&all, Some("9")).err().unwrap().to_string(), "the repository holds no base backup of cluster 9");
    assert_eq!(chain_of(&all, None).err().unwrap().to_string(), "the repository holds 2 clusters (7, 8): choose one with --system-id");
    assert_eq!(chain_of(&chains(&snaps[..1]), None).unwrap().bases.len(), 1);
    assert_eq!(chain_of(&chains(&[]), None).err().unwrap().to_string(), "the repository holds no base backup (tresor pg backup)");
}

#[test]
fn the_segment_size_comes_from_the_snapshots() {
    let mut small = base(1, 3, 3, 2);
    small.source.consistency.insert("wal_segment_size".into(), json!(1 << 20));
    assert_eq!((seg_size(&small), recorded_seg_size(&small)), (1 << 20, Some(1 << 20)));
    assert_eq!((seg_size(&base(2, 3, 3, 2)), recorded_seg_size(&base(2, 3, 3, 2))), (MB16, None));
    let mut w = wal(3, &seg(1, 3), None);
    w.source.consistency.insert("wal_segment_size".into(), json!(64 << 20));
    let snaps = vec![w, base(4, 3, 3, 2)];
    assert_eq!(chains(&snaps)["7"].seg_size(), MB16, "the first base backup's size wins over the WAL's");
    assert_eq!(chains(&snaps[..1])["7"].seg_size(), 64 << 20, "without a base backup, the first WAL file's");
}

#[test]
fn forgetting_a_base_backup_forgets_the_wal_only_it_needed() {
    let snaps = vec![
        base(1, 3, 3, 2),
        base(2, 6, 6, 5),
        wal(10, &seg(1, 3), None),
        wal(11, &seg(1, 4), None),
        wal(12, &seg(1, 5), None),
        wal(13, &seg(1, 6), None),
        wal(14, "00000002.history", None),
    ];
    let ids = |ns: &[u8]| ns.iter().map(|n| Id([*n; 32])).collect::<IdSet>();
    let none = HashMap::new();
    let gone = wal_to_forget(&snaps, &ids(&[1]), &none);
    assert_eq!(names(&gone), [seg(1, 3), seg(1, 4), seg(1, 5)], "before the oldest base backup that stays; history stays");
    let held = HashMap::from([(Id([11; 32]), "audit".to_string())]);
    assert_eq!(names(&wal_to_forget(&snaps, &ids(&[1]), &held)), [seg(1, 3), seg(1, 5)], "a held WAL file stays");
    assert_eq!(names(&wal_to_forget(&snaps, &ids(&[1, 10]), &none)), [seg(1, 4), seg(1, 5)], "removed already: not twice");
    assert!(wal_to_forget(&snaps, &ids(&[2]), &none).is_empty(), "the older base backup (say, held) keeps its WAL and all after");
    assert!(wal_to_forget(&snaps, &ids(&[1, 2]), &none).is_empty(), "with no base backup left the chain is not cut blind");
    assert!(wal_to_forget(&snaps, &ids(&[10]), &none).is_empty(), "no base backup removed: WAL is never forgotten by policy");
}

#[test]
fn the_base_backup_is_the_newest_complete_before_the_target() {
    let (b1, b2, b3) = (base(1, 3, 3, 10), base(2, 6, 6, 20), base(3, 9, 9, 30));
    let bases = [&b1, &b2, &b3];
    let chosen = |stop: Stop| choose_base(&bases, None, &stop, None).map(|b| b.id);
    assert_eq!(chosen(Stop::Time(at(25))).unwrap(), b2.id);
    assert_eq!(chosen(Stop::Time(at(20))).unwrap(), b2.id, "complete at the target itself counts");
    assert_eq!(chosen(Stop::Time(at(99))).unwrap(), b3.id);
    assert_eq!(
        chosen(Stop::Time(at(9))).unwrap_err().to_string(),
        "no base backup was complete before the target; the oldest ended at 2023-11-14T22:23:20+00:00"
    );
    assert_eq!(chosen(Stop::Lsn("0/8000000".into())).unwrap(), b2.id, "the newest whose end LSN is at or before it");
    assert_eq!(chosen(Stop::Lsn("0/6000100".into())).unwrap(), b2.id);
    let end = b1.source.consistency["end_lsn"].as_str().unwrap().to_string();
    assert_eq!(
        chosen(Stop::Lsn("0/30000FF".into())).unwrap_err().to_string(),
        format!("no base backup was complete before the target; the oldest ended at LSN {end}")
    );
    assert_eq!(chosen(Stop::Lsn("3000000".into())).unwrap_err().to_string(), r#"cannot read LSN "3000000" (use X/Y)"#);
    assert_eq!((chosen(Stop::Latest).unwrap(), chosen(Stop::Immediate).unwrap()), (b3.id, b3.id));
    assert_eq!(
        choose_base(&[], None, &Stop::Latest, None).unwrap_err().to_string(),
        "the repository holds no base backup (tresor pg backup)"
    );
}

#[test]
fn a_base_backup_asked_for_is_taken_whatever_the_target() {
    let (b1, b2) = (base(1, 3, 3, 10), base(2, 6, 6, 20));
    let bases = [&b1, &b2];
    assert_eq!(choose_base(&bases, Some("0101"), &Stop::Time(at(0)), None).unwrap().id, b1.id);
    assert_eq!(choose_base(&bases, Some("latest"), &Stop::Lsn("bad".into()), None).unwrap().id, b2.id, "the LSN is not read then");
    let e = choose_base(&bases, Some("0303"), &Stop::Latest, None).unwrap_err();
    let chain: Vec<String> = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect();
    assert_eq!(chain, ["no base backup 0303", r#"no snapshot matches "0303""#]);
    assert!(!e.is_temporary());
}

#[test]
fn the_recovery_plan_follows_the_base_backups_timeline_to_the_target() {
    let mut snaps = vec![base(1, 3, 4, 10)];
    for (n, (tli, segno, commit)) in
        [(1, 3, Some(5)), (1, 4, Some(12)), (1, 5, Some(20)), (1, 6, None), (2, 6, Some(30)), (2, 7, None)].into_iter().enumerate()
    {
        snaps.push(wal(10 + n as u8, &seg(tli, segno), commit));
    }
    snaps.push(wal(20, "00000002.history", None));
    let all = chains(&snaps);
    let chain = &all["7"];
    let plan = |stop: Stop| recovery_plan(chain, chain.bases[0], &stop, 16).unwrap();
    let latest = plan(Stop::Latest);
    assert_eq!(latest.segments, [seg(1, 3), seg(1, 4), seg(1, 5), seg(1, 6)], "timeline 2 is PostgreSQL's choice, not planned");
    assert_eq!(latest.history, ["00000002.history"]);
    assert_eq!(latest.last_segment, BTreeMap::from([(1, 6), (2, 7)]));
    assert_eq!((latest.system_id, latest.window, latest.seg_size), (7, 16, MB16));
    assert_eq!(plan(Stop::Time(at(11))).segments, [seg(1, 3), seg(1, 4), seg(1, 5)], "through the first commit after it, and one more");
    assert_eq!(plan(Stop::Lsn("0/5000010".into())).segments, [seg(1, 3), seg(1, 4), seg(1, 5), seg(1, 6)]);
    assert_eq!(plan(Stop::Immediate).segments, [seg(1, 3), seg(1, 4), seg(1, 5)], "through the base backup's end segment");
    assert_eq!(recovery_plan(chain, chain.bases[0], &Stop::Lsn("x".into()), 16), None);
    let no_start = snap(2, PG_BASE, json!({"system_id": "7"}));
    assert_eq!(recovery_plan(chain, &no_start, &Stop::Latest, 16), None, "a base backup that does not say where its WAL starts");
}

#[test]
fn a_plan_knows_what_the_archive_lacks() {
    let plan = Plan {
        system_id: 7,
        window: 4,
        segments: vec![],
        history: vec!["00000002.history".into()],
        last_segment: BTreeMap::from([(1, 6)]),
        seg_size: MB16,
    };
    let lacks = |name: &str| plan.lacks(&WalFile::parse(name).unwrap());
    assert!(!lacks(&seg(1, 6)) && lacks(&seg(1, 7)) && lacks(&seg(2, 1)));
    assert!(!lacks("00000002.history") && lacks("00000003.history"));
    assert!(!lacks("000000010000000000000009.partial"), "not known to the plan: asked of the repository");
}

#[test]
fn the_prefetcher_keeps_its_window_and_the_last_segments_are_kept() {
    let plan = Plan {
        system_id: 7,
        window: 4,
        segments: (3..8).map(|n| seg(1, n)).collect(),
        history: vec![],
        last_segment: BTreeMap::new(),
        seg_size: MB16,
    };
    assert_eq!(plan.to_start(0, 0, 0, 3), 3, "no more at once than parallel");
    assert_eq!(plan.to_start(3, 1, 1, 3), 2, "the window: one spooled, one running");
    assert_eq!(plan.to_start(3, 4, 0, 3), 0, "a full spool waits");
    assert_eq!(plan.to_start(4, 0, 0, 3), 1, "none past the plan's end");
    assert_eq!(plan.to_start(5, 0, 0, 3), 0);
    assert_eq!(plan.to_start(0, 0, 3, 3), 0);
    assert_eq!(plan.place(&seg(1, 3)), (Some(0), false));
    assert_eq!(plan.place(&seg(1, 5)), (Some(2), false));
    assert_eq!((plan.place(&seg(1, 6)), plan.place(&seg(1, 7))), ((Some(3), true), (Some(4), true)));
    assert_eq!(plan.place(&seg(1, 8)), (None, false));
}

#[test]
fn verify_finds_gaps_and_base_backups_the_archive_does_not_reach() {
    let snaps = vec![
        base(1, 2, 3, 2),
        base(2, 6, 6, 5),
        wal(10, &seg(1, 6), None),
        wal(11, &seg(1, 9), None),
        wal(12, &seg(1, 10), None),
        wal(13, &seg(2, 11), None),
    ];
    let all = chains(&snaps);
    let (ranges, problems) = verify(&all["7"]);
    assert_eq!(ranges[&1], Span { first: 6, last: 10, count: 3 });
    assert_eq!(ranges[&2], Span { first: 11, last: 11, count: 1 });
    let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        said,
        [
            "gap on timeline 1: 000000010000000000000007 … 000000010000000000000008 (2 segments missing)".to_string(),
            format!(
                "base backup {}: the archived WAL starts at 000000010000000000000006, after its end 000000010000000000000003: it recovers no further than its end",
                Id([1; 32]).short()
            ),
        ]
    );
    assert!(verify(&chains(&snaps[1..3])["7"]).1.is_empty(), "a base backup whose WAL is archived from its end on");
}

/// The archive stopped before a base backup's end (a failing
/// archive_command), or never ran (archive_mode off): verify says so.
#[test]
fn verify_finds_base_backups_whose_end_the_archive_does_not_hold() {
    let snaps = vec![base(1, 2, 2, 2), base(2, 5, 5, 5), wal(10, &seg(1, 2), None), wal(11, &seg(1, 3), None)];
    let said: Vec<String> = verify(&chains(&snaps)["7"]).1.iter().map(ToString::to_string).collect();
    let msg = format!(
        "base backup {}: the archived WAL of timeline 1 ends at 000000010000000000000003, before its end 000000010000000000000005: it recovers no further than its end",
        Id([2; 32]).short()
    );
    assert_eq!(said, [msg]);
    let said: Vec<String> = verify(&chains(&snaps[1..2])["7"]).1.iter().map(ToString::to_string).collect();
    let msg = format!(
        "base backup {}: the archive holds no WAL of its timeline 1, not even its end 000000010000000000000005: it recovers no further than its end",
        Id([2; 32]).short()
    );
    assert_eq!(said, [msg]);
    assert_eq!(end_segment(&snaps[1]).as_deref(), Some("000000010000000000000005"));
    assert_eq!(end_segment(&snap(3, PG_BASE, json!({"system_id": "7"}))), None);
}

/// A base backup on timeline `tli` whose WAL runs from `start` through
/// `end`, complete at minute `ended`.
fn base_on(n: u8, tli: u32, start: u64, end: u64, ended: i64) -> Snapshot {
    let mut b = base(n, start, end, ended);
    b.source.consistency.insert("timeline".into(), tli.into());
    b.source.consistency.insert("start_wal".into(), seg(tli, start).into());
    b
}

/// A test restore promoted timeline 2 off timeline 1 at segment 5; the
/// newest base backup is of that clone, on timeline 2. A recovery onto
/// timeline 1 (or one later than 2, forked before it) starts from one
/// of production's, and is refused when none is before the target.
#[test]
fn the_base_backup_lies_on_the_target_timelines_history() {
    let (b1, b2, b3) = (base_on(1, 1, 3, 3, 10), base_on(2, 1, 6, 6, 20), base_on(3, 2, 8, 8, 30));
    let bases = [&b1, &b2, &b3];
    let forks = [Fork { parent: 1, switch_lsn: 5 * MB16 }];
    let chosen = |stop: Stop, on: OnTimeline| choose_base(&bases, None, &stop, on).map(|b| b.id);
    assert_eq!(chosen(Stop::Latest, None).unwrap(), b3.id, "current: the newest, on its own timeline");
    assert_eq!(chosen(Stop::Latest, Some((1, &[]))).unwrap(), b2.id, "timeline 1: production's newest");
    assert_eq!(chosen(Stop::Time(at(99)), Some((1, &[]))).unwrap(), b2.id);
    assert_eq!(chosen(Stop::Latest, Some((2, &forks))).unwrap(), b3.id);
    assert_eq!(chosen(Stop::Time(at(25)), Some((2, &forks))).unwrap(), b1.id, "b2 ended on timeline 1 after 2 branched off");
    assert_eq!(
        chosen(Stop::Time(at(25)), Some((3, &[]))).unwrap_err().to_string(),
        "no base backup complete before the target can recover onto timeline 3: they are on timeline 1, which it did not branch off after their end"
    );
    assert_eq!(
        choose_base(&bases, Some("0303"), &Stop::Latest, Some((1, &[]))).unwrap_err().to_string(),
        format!(
            "base backup {} is on timeline 2, which timeline 1 did not branch off after its end: it cannot recover onto timeline 1",
            b3.id.short()
        )
    );
    assert_eq!(choose_base(&bases, Some("0202"), &Stop::Latest, Some((1, &[]))).unwrap().id, b2.id);
    assert_eq!(chosen(Stop::Name("before-upgrade".into()), Some((1, &[]))).unwrap(), b2.id, "a restore point: the newest");
    assert_eq!(chosen(Stop::Xid("1234".into()), None).unwrap(), b3.id);

    let snaps = vec![b1.clone(), b3.clone(), wal(10, "00000002.history", None), wal(11, &seg(1, 3), None)];
    let all = chains(&snaps);
    let chain = &all["7"];
    assert_eq!(target_timeline(chain, "latest"), Some(2));
    assert_eq!((target_timeline(chain, "current"), target_timeline(chain, "1")), (None, Some(1)));
    assert_eq!(target_timeline(&chains(&snaps[..1])["7"], "latest"), Some(1));
    assert_eq!(history_file(chain, 2, true).unwrap().as_deref(), Some("00000002.history"));
    assert_eq!(history_file(chain, 1, true).unwrap(), None, "timeline 1 has none");
    assert_eq!(history_file(chain, 3, false).unwrap(), None);
    assert_eq!(
        history_file(chain, 3, true).unwrap_err().to_string(),
        "the archive holds no history of timeline 3 (00000003.history): PostgreSQL cannot recover onto it"
    );
    let plan = recovery_plan(chain, &b1, &Stop::Name("x".into()), 4).unwrap();
    assert_eq!(plan.segments, [seg(1, 3)], "a restore point or an xid plans through the end, as --latest");
}
