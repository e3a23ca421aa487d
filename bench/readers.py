#!/usr/bin/env python3
"""Reading a snapshot of many small files: `ls`, `diff` of two snapshots
that differ in a few files, `stats`, and `restore --verify-only`, each
timed with /usr/bin/time (wall time and peak RSS), for one or more tresor
builds (and restic where installed) on one repository each.

    bench/readers.py [--files N] [--dirs D] [--tresor PATH ...]
                     [--work DIR] [--out FILE]

The tree is bench/files.py's (default 500,000 files in 25,000
directories). Each tool backs it up, then again after 10 files changed and
10 were added in one directory; `diff` compares those two snapshots and
must report exactly 10 modified and 10 added files. Every tresor build
given reads the one tresor repository, so builds are compared on the same
bytes. Prints a Markdown table (and writes it to --out).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bucket import emit, measured
from files import make_tree, tally

CHANGED = 10


def change(tree: Path) -> None:
    """Rewrite CHANGED files of the first directory and add as many."""
    first = sorted((tree / "000" / "000000").iterdir())
    for f in first[:CHANGED]:
        f.write_bytes(f.read_bytes() + b"changed\n")
    for i in range(CHANGED):
        (tree / "000" / "000000" / f"new{i}").write_bytes(b"new %d\n" % i)


def phases(tool: str, exe: str, target: Path) -> dict:
    """The commands measured, by name, for one tool (ids filled in later)."""
    if tool == "restic":
        return {"ls": [exe, "ls", "latest"], "diff": [exe, "diff", "{a}", "{b}"], "stats": [exe, "stats", "--mode", "restore-size"],
                "verify": None}
    return {"ls": [exe, "ls", "latest"], "diff": [exe, "diff", "{a}", "{b}"], "stats": [exe, "stats"],
            "verify": [exe, "restore", "latest", "--target", str(target), "--verify-only"]}


def ids(tool: str, exe: str, env: dict) -> list:
    """The two snapshots' ids, oldest first."""
    out = subprocess.run([exe, "snapshots", "--json"], env=env, check=True, capture_output=True, text=True).stdout
    return [s["id"] for s in json.loads(out)]


def run(tool: str, exe: str, env: dict, target: Path) -> dict:
    a, b = ids(tool, exe, env)[:2]
    row = {}
    for name, cmd in phases(tool, exe, target).items():
        if cmd is None:
            continue
        cmd = [c.format(a=a, b=b) for c in cmd]
        if name == "diff":
            text = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            got, want = text.strip().splitlines()[-1], f"{CHANGED} added, 0 removed, {CHANGED} modified"
            if tool != "restic" and got != want:
                raise SystemExit(f"{exe} diff: {got!r}, not {want!r}")
        row[name] = measured(cmd, env)
        print(f"{exe} {name}: {row[name][0]:.1f} s, {row[name][1]} MiB", file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500_000)
    ap.add_argument("--dirs", type=int, default=25_000)
    ap.add_argument("--tresor", action="append", help="a tresor binary (repeat to compare builds)")
    ap.add_argument("--work", default="/tmp/tresor-bench-readers")
    ap.add_argument("--out")
    args = ap.parse_args()
    builds = args.tresor or [str(Path(__file__).resolve().parent.parent / "target/release/tresor")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    rows = {}
    try:
        tree = work / "tree"
        want = make_tree(tree, args.files, args.dirs)
        (work / "pw").write_text("bench\n")
        env = dict(os.environ, TRESOR_REPOSITORY=str(work / "repo"), TRESOR_PASSWORD_FILE=str(work / "pw"),
                   RESTIC_REPOSITORY=str(work / "repo-restic"), RESTIC_PASSWORD_FILE=str(work / "pw"),
                   TRESOR_CACHE_DIR=str(work / "cache"), RESTIC_CACHE_DIR=str(work / "cache-restic"))
        tools = [("tresor", builds[0])] + ([("restic", "restic")] if shutil.which("restic") else [])
        for tool, exe in tools:
            subprocess.run([exe, "init"], env=env, check=True, capture_output=True)
            subprocess.run([exe, "backup", str(tree)], env=env, check=True, capture_output=True)
        change(tree)
        for tool, exe in tools:
            subprocess.run([exe, "backup", str(tree)], env=env, check=True, capture_output=True)
        subprocess.run([builds[0], "restore", "latest", "--target", str(work / "restored")], env=env, check=True, capture_output=True)
        got = tally(work / "restored")
        if got[0] != want[0] + CHANGED:
            raise SystemExit(f"restored {got[0]} files, not {want[0] + CHANGED}")
        for exe in builds:
            rows[exe] = run("tresor", exe, env, work / "restored")
        if shutil.which("restic"):
            rows["restic"] = run("restic", "restic", env, work / "restored")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{want[0] + CHANGED:,} files in {args.dirs:,} directories; diff of two snapshots {CHANGED} files modified and "
             f"{CHANGED} added apart:", "",
             "| build | ls | peak RSS | diff | peak RSS | stats | peak RSS | restore --verify-only | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for exe, r in rows.items():
        cells = " | ".join(f"{r[p][0]:.1f} s | {r[p][1]} MiB" if p in r else "– | –" for p in ("ls", "diff", "stats", "verify"))
        lines.append(f"| {exe} | {cells} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
