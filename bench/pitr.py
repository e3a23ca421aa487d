#!/usr/bin/env python3
"""Point-in-time recovery: tresor against PostgreSQL's own tools.

    python3 bench/pitr.py [SEGMENTS ...]     (default: 8 500)

Run as the user that runs PostgreSQL (as root: `runuser -u postgres -- …`);
TRESOR (default `tresor` on PATH) is the binary measured, BENCH_PG_BIN the
PostgreSQL programs, BENCH_PITR_WORK the scratch directory, BENCH_PG_SCALE the
pgbench scale of the database (default 20).

One cluster archives every WAL segment twice: `cp` into a plain directory
and `tresor pg wal-push` into a repository. After a base backup by each tool
(`pg_basebackup -Ft -X fetch`, `tresor pg backup`), SEGMENTS segments of WAL
are written (1000 rows inserted and a `pg_switch_wal()` per segment), then a
recovery target time, then one more commit. Each tool then builds a data
directory that recovers to that moment and the server is started on it until
`pg_is_in_recovery()` answers f: `tar -x` with `restore_command = 'cp ARCHIVE/%f
%p'` against `tresor pg restore --time T`. Every restored cluster must hold
exactly the rows committed before the target. Prints one Markdown row per
SEGMENTS value, and on stderr each restore's two phases (base backup
restored; recovery replayed until promoted) and the prefetcher's report.

Nothing is removed until every run has been measured: each run works in a
directory of its own. ext4 skips inodes freed in the last minute (five, while
their table block is dirty) when it creates a file, scanning past each one
for every file created, so a restore made right after a removal pays for
the removal: a `tar -x` of the base backup took 1.1-1.5 s in that state
against 0.4 s without it.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
TRESOR = os.environ.get("TRESOR", "tresor")
WORK = Path(os.environ.get("BENCH_PITR_WORK", "/tmp/tresor-pitr-bench"))
SCALE = os.environ.get("BENCH_PG_SCALE", "20")
PORT, PORT2 = 55432, 55433


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout.strip()


def timed(*cmd):
    t = time.monotonic()
    run(*cmd)
    return time.monotonic() - t


def psql(port, sql, db="postgres"):
    return run(PG_BIN / "psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", db, "-c", sql)


def start(data, port):
    run(PG_BIN / "pg_ctl", "-D", data, "-o", f"-p {port} -k {WORK} -c listen_addresses=127.0.0.1", "-l", data.parent / f"{data.name}.log",
        "-w", "-t", "3600", "start")


def stop(data):
    run(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop")


def recovered(data, port):
    """Start the restored cluster; seconds until it has left recovery."""
    t = time.monotonic()
    start(data, port)
    while psql(port, "SELECT pg_is_in_recovery()") != "f":
        time.sleep(0.02)
    return time.monotonic() - t


def tresor(work, *args):
    return [TRESOR, "--repo", work / "repo", "--password-file", work / "pw", "--no-cache", "--quiet", *args]


def measure(segments, work):
    (work / "archive").mkdir(parents=True)
    (work / "pw").write_text("bench\n")
    run(*tresor(work, "init"))
    src = work / "src"
    run(PG_BIN / "initdb", "-D", src, "-A", "trust", "-U", "postgres", "--no-sync")
    push = " ".join(f"'{a}'" for a in tresor(work, "pg", "wal-push", "%p"))
    with open(src / "postgresql.conf", "a") as conf:
        conf.write(f"archive_mode = on\nwal_level = replica\n"
                   f"archive_command = 'cp %p {work}/archive/%f && {push.replace(chr(39), chr(39) * 2)}'\n")
    start(src, PORT)
    run(PG_BIN / "pgbench", "-i", "-q", "-s", SCALE, "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "postgres")
    psql(PORT, "CREATE TABLE t (id int, note text); CHECKPOINT")
    direct_backup = timed(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-D", work / "basebackup", "-Ft",
                          "-X", "fetch", "-c", "fast")
    tresor_backup = timed(*tresor(work, "pg", "backup", f"postgres://postgres@127.0.0.1:{PORT}"))
    script = "".join(f"INSERT INTO t SELECT g, 'segment {i}' FROM generate_series(1, 1000) g;\nSELECT pg_switch_wal();\n"
                     for i in range(segments))
    run(PG_BIN / "psql", "-X", "-q", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", "postgres", input=script)
    target = psql(PORT, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    psql(PORT, "INSERT INTO t VALUES (0, 'after the target')")
    last = psql(PORT, "SELECT pg_walfile_name(pg_switch_wal())")
    while psql(PORT, "SELECT last_archived_wal FROM pg_stat_archiver") < last:
        time.sleep(0.1)
    stop(src)
    want = str(segments * 1000)

    pg_target = target.replace("T", " ").replace("Z", "+00")
    direct = work / "direct"
    direct.mkdir(mode=0o700)
    t = time.monotonic()
    run("tar", "-x", "-f", work / "basebackup/base.tar", "-C", direct)
    with open(direct / "postgresql.auto.conf", "a") as conf:
        conf.write(f"restore_command = 'cp {work}/archive/%f %p'\nrecovery_target_time = '{pg_target}'\n"
                   "recovery_target_action = 'promote'\narchive_mode = 'off'\n")
    (direct / "recovery.signal").write_text("")
    direct_unpack = time.monotonic() - t
    direct_replay = recovered(direct, PORT2)
    assert psql(PORT2, "SELECT count(*) FROM t") == want
    stop(direct)

    restored = work / "restored"
    t = time.monotonic()
    run(*tresor(work, "pg", "restore", "--time", target, "--no-archive", "--target", restored))
    tresor_unpack = time.monotonic() - t
    tresor_replay = recovered(restored, PORT2)
    assert psql(PORT2, "SELECT count(*) FROM t") == want
    while not (restored / "tresor-prefetch.json").exists():
        time.sleep(0.02)
    report = (restored / "tresor-prefetch.json").read_text()
    stop(restored)
    direct_total = direct_backup + direct_unpack + direct_replay
    tresor_total = tresor_backup + tresor_unpack + tresor_replay
    d_restore, t_restore = direct_unpack + direct_replay, tresor_unpack + tresor_replay
    print(f"| {segments} | {direct_backup:.2f} / {tresor_backup:.2f} | {d_restore:.2f} / {t_restore:.2f} | "
          f"{t_restore / d_restore:.2f}× | {direct_total:.2f} / {tresor_total:.2f} | {tresor_total / direct_total:.2f}× |", flush=True)
    print(f"{segments} segments: base restore (s) direct / tresor {direct_unpack:.2f} / {tresor_unpack:.2f}, "
          f"replay until promoted {direct_replay:.2f} / {tresor_replay:.2f}", file=sys.stderr, flush=True)
    print(report.replace("\n", " "), file=sys.stderr, flush=True)


def main():
    print(run(TRESOR, "--version"), "/", run(PG_BIN / "postgres", "--version"), file=sys.stderr)
    print("| segments replayed | backup (s): direct / tresor | PITR restore until promoted (s): direct / tresor | restore ratio "
          "| backup + restore (s): direct / tresor | total ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    shutil.rmtree(WORK, ignore_errors=True)
    for i, n in enumerate([int(a) for a in sys.argv[1:]] or [8, 500]):
        measure(n, WORK / f"run-{i}")
    shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
