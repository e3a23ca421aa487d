#!/usr/bin/env python3
"""Millions of small files: tresor against restic and rustic on one
generated tree, measured with /usr/bin/time (wall time and peak RSS): the
first backup, a backup of the unchanged tree, and a restore to disk, plus
the repository's size.

    bench/files.py [--files N] [--dirs D] [--tools tresor,restic,rustic]
                   [--tresor PATH] [--work DIR] [--tree DIR] [--out FILE]

The tree (default 2,000,000 files in 100,000 directories, 0 to 4 KiB each,
the same bytes on every run) is written under --work (default
/tmp/tresor-bench-files) and removed at the end, with the repositories and
the restored trees; --tree DIR uses (and keeps) the tree in DIR, writing it
there first if DIR does not exist, so that tools can be measured in
separate runs on one tree when the disk cannot hold every restored tree.
restic and rustic are found on PATH or in bench/.tools/bin (bench/run.sh
installs them). Prints a Markdown table (and writes it to --out). The
restored tree is checked for the same number of files and bytes.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bucket import emit, measured

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "bench" / ".tools" / "bin"
MAX_SIZE = 4096
BLOCK = 4096


def check_room(work: Path, files: int, dirs: int, trees: int) -> None:
    """Stop before the trees (the source and each restored one, a 4 KiB
    block and an inode per file) and the repositories (less than a tree
    each) fill the disk or its inodes."""
    st = os.statvfs(work)
    free, inodes = st.f_bavail * st.f_frsize, st.f_favail
    need_bytes, need_inodes = files * BLOCK * (2 * trees - 1), trees * (files + dirs)
    print(f"{work}: {free / 2**30:.1f} GiB and {inodes} inodes free; need about {need_bytes / 2**30:.1f} GiB and "
          f"{need_inodes} inodes", file=sys.stderr)
    if free < need_bytes or inodes < need_inodes:
        raise SystemExit(f"not enough room in {work} for {files} files")


def make_tree(root: Path, files: int, dirs: int) -> tuple[int, int]:
    """files spread over dirs directories (two levels), deterministic: count and bytes."""
    rng = random.Random(2026)
    pool = rng.randbytes(1 << 20)
    total = 0
    for i in range(files):
        d = i % dirs
        if i < dirs:
            (root / f"{d // 1000:03}" / f"{d:06}").mkdir(parents=True)
        size = rng.randrange(MAX_SIZE + 1)
        head = f"file {i}\n".encode()[:size]
        start = rng.randrange(len(pool) - MAX_SIZE)
        data = head + pool[start:start + size - len(head)]
        with open(root / f"{d // 1000:03}" / f"{d:06}" / f"f{i:07}", "wb") as f:
            f.write(data)
        total += size
    return files, total


def tally(root: Path) -> tuple[int, int]:
    """Regular files under root and their bytes."""
    count = size = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    count += 1
                    size += e.stat(follow_symlinks=False).st_size
    return count, size


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout.split()[0])


def commands(tool: str, tresor: str, repo: Path, pw: Path, cache: Path) -> tuple[dict, dict]:
    """(environment, commands) of one tool: init, backup TREE, restore TARGET."""
    env = dict(os.environ)
    if tool == "tresor":
        env.update(TRESOR_REPOSITORY=str(repo), TRESOR_PASSWORD_FILE=str(pw), TRESOR_CACHE_DIR=str(cache))
        return env, {"init": [tresor, "init"], "backup": [tresor, "backup"],
                     "restore": [tresor, "restore", "latest", "--target"]}
    if tool == "restic":
        env.update(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD_FILE=str(pw), RESTIC_CACHE_DIR=str(cache))
        return env, {"init": ["restic", "init"], "backup": ["restic", "backup"],
                     "restore": ["restic", "restore", "latest", "--target"]}
    base = ["rustic", "-r", str(repo), "--password-file", str(pw), "--no-progress"]
    env.update(RUSTIC_CACHE_DIR=str(cache))
    return env, {"init": base + ["init"], "backup": base + ["backup"], "restore": base + ["restore", "latest"]}


def measure(tool: str, args, work: Path, tree: Path, want: tuple[int, int]) -> dict:
    repo, cache, target = work / f"repo-{tool}", work / f"cache-{tool}", work / f"restore-{tool}"
    env, cmd = commands(tool, args.tresor, repo, work / "pw", cache)
    subprocess.run(cmd["init"], env=env, check=True, capture_output=True)
    row = {}
    for phase in ("first", "unchanged"):
        os.sync()
        row[phase] = measured(cmd["backup"] + [str(tree)], env)
        print(f"{tool} {phase} backup: {row[phase][0]:.1f} s, {row[phase][1]} MiB", file=sys.stderr, flush=True)
    row["repo"] = du(repo)
    os.sync()
    row["restore"] = measured(cmd["restore"] + [str(target)], env)
    print(f"{tool} restore: {row['restore'][0]:.1f} s, {row['restore'][1]} MiB", file=sys.stderr, flush=True)
    got = tally(target)
    if got != want:
        raise SystemExit(f"{tool} restored {got[0]} files of {got[1]} bytes, not {want[0]} of {want[1]}")
    # Nothing is removed before the last restore: ext4 looks at (and passes
    # over) every inode freed in the last minutes when it allocates one, and
    # a restore after removing a million files took 1.7 times as long.
    return row


def exe(tool: str, tresor: str) -> str:
    return tresor if tool == "tresor" else tool


def version(tool: str, tresor: str) -> str:
    if not shutil.which(exe(tool, tresor)):
        return f"{tool} not installed"
    out = subprocess.run([exe(tool, tresor), "version" if tool == "restic" else "--version"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0]


def count(text: str) -> int:
    """--files or --dirs, refused below 1: directories are made only as files
    go in them (no file, no tree to rename into place), files are dealt to
    directories by number (no directory, a division by zero), and an empty
    tree would measure nothing."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=count, default=2_000_000)
    ap.add_argument("--dirs", type=count, default=100_000)
    ap.add_argument("--tools", default="tresor,restic,rustic")
    ap.add_argument("--tresor", default=str(ROOT / "target/release/tresor"))
    ap.add_argument("--work", default="/tmp/tresor-bench-files")
    ap.add_argument("--tree", help="a tree to keep: written there unless an earlier run did (--files and --dirs as then)")
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ["PATH"] = f"{TOOLS}:{os.environ['PATH']}"
    tools = [t for t in args.tools.split(",") if t]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    try:
        tree = Path(args.tree) if args.tree else work / "tree"
        written = tree.exists()
        check_room(work, args.files, args.dirs, len(tools) + (0 if written else 1))
        (work / "pw").write_text("bench\n")
        t = time.monotonic()
        if written:
            want = tally(tree)
        else:
            # Written aside and renamed when whole: a run stopped while writing
            # leaves no tree that a later --tree run would take for finished.
            partial = tree.with_name(tree.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            want = make_tree(partial, args.files, args.dirs)
            partial.rename(tree)
        print(f"tree: {want[0]} files, {want[1] / 2**20:.0f} MiB in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
        rows = {tool: measure(tool, args, work, tree, want) if shutil.which(exe(tool, args.tresor)) else None for tool in tools}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"{want[0]:,} files ({want[1] / 2**20:.0f} MiB, 0–{MAX_SIZE // 1024} KiB each) in {args.dirs:,} directories; "
        + "; ".join(version(t, args.tresor) for t in tools) + ":",
        "",
        "| tool | first backup | peak RSS | no-change backup | peak RSS | restore to disk | peak RSS | repository |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, r in rows.items():
        if r is None:
            lines.append(f"| {tool} | not installed |")
            continue
        lines.append(f"| {tool} | {r['first'][0]:.1f} s | {r['first'][1]} MiB | {r['unchanged'][0]:.1f} s | {r['unchanged'][1]} MiB "
                     f"| {r['restore'][0]:.1f} s | {r['restore'][1]} MiB | {r['repo'] / 2**20:.0f} MiB |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
