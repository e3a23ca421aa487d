#!/usr/bin/env python3
"""Benchmark harness: tresor vs restic, rustic and borg on the same data.

Usage:
    bench.py run                 measure everything (settings from BENCH_* env),
                                 write bench/work/results.json and the markdown
    bench.py blobs               only the prune-memory-per-blob measurement, merged
                                 into the existing results.json
    bench.py pg                  only the PostgreSQL measurements (pgbench database;
                                 tresor pg backup/restore and postgres:// vs
                                 pg_basebackup, pg_dump/pg_restore and restic),
                                 merged into the existing results.json
    bench.py report [--results F] [--out F]
                                 regenerate the markdown from a results.json

bench/run.sh installs the tools and builds tresor first; see bench/README.md.
Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK = BENCH_DIR / "work"
DATA = WORK / "data"
REPOS = WORK / "repos"
CACHES = WORK / "cache"
LOGS = WORK / "logs"
RESULTS = WORK / "results.json"
PASSWORD_FILE = WORK / "password"
# Written before a dataset is mutated, deleted after it is reverted: if the run
# dies in between, the next run reverts from it so the dataset stays pristine.
MUTATION_JOURNAL = WORK / "mutation.json"
DISK_RESTORE = WORK / "restore"
DISK_COPY = WORK / "cp"
TMPFS_RESTORE = Path("/dev/shm/tresor-bench-restore")
TMPFS_COPY = Path("/dev/shm/tresor-bench-cp")
LINUX_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")

# (key, label) of the timed phases shown in the per-dataset time table.
PHASES = [
    ("backup_initial", "initial backup"),
    ("backup_nochange", "no-change backup"),
    ("backup_changed", "1% change backup"),
    ("restore_tmpfs", "restore → tmpfs"),
    ("restore_disk", "restore → disk"),
    ("forget_prune", "forget all but the latest + prune"),
]
BACKUP_PHASES = ["backup_initial", "backup_nochange", "backup_changed"]
RESTORE_PHASES = ["restore_tmpfs", "restore_disk"]
PRUNE_PHASES = ["forget_prune"]
BASELINES = [
    ("copy_tmpfs", "cp -a → tmpfs"),
    ("copy_disk", "cp -a → disk"),
    ("hash_floor", "read + BLAKE3 hash floor (b3sum, 2 threads)"),
]
ALL_TOOLS = ["tresor", "restic", "rustic", "borg"]
LARGE_FILES = 10
DUP_FRACTION = 0.30  # share of each "derived" large file copied from others
MiB = 1 << 20


# ----------------------------------------------------------------------------
# Configuration


class Config:
    """Settings from the BENCH_* environment variables."""

    def __init__(self) -> None:
        env = os.environ
        self.quick = env.get("BENCH_QUICK", "0") not in ("", "0")
        self.runs = int(env.get("BENCH_RUNS", "1" if self.quick else "3"))
        self.datasets = split_list(env.get("BENCH_DATASETS", "linux,large"))
        self.tools = split_list(env.get("BENCH_TOOLS", ",".join(ALL_TOOLS)))
        self.large_mb = int(env.get("BENCH_LARGE_MB", "300" if self.quick else "2500"))
        self.timeout = int(env.get("BENCH_TIMEOUT", "3600"))
        self.pg_scale = int(env.get("BENCH_PG_SCALE", "50"))
        # Repositories of this many one-blob files, to measure prune memory per blob.
        self.blob_counts = [int(n) for n in split_list(env.get("BENCH_BLOBS", "5000,50000" if self.quick else "20000,200000"))]
        self.out = Path(env.get("BENCH_OUT", REPO_ROOT / "docs" / "BENCHMARKS.md"))
        self.tresor_bin = env.get("TRESOR_BIN", str(REPO_ROOT / "target" / "release" / "tresor"))
        unknown = [t for t in self.tools if t not in ALL_TOOLS]
        if unknown:
            sys.exit(f"unknown tool(s) in BENCH_TOOLS: {unknown}")


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# ----------------------------------------------------------------------------
# Running commands


def run_measured(cmd, log: Path, env=None, cwd=None, ok_codes=(0,), timeout=3600) -> dict:
    """Run cmd under GNU time; return wall seconds, peak RSS and success.

    Wall time is taken here with time.monotonic (GNU time only reports RSS).
    Output goes to `log` so progress bars never reach the terminal.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".rss")
    full = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "--", *cmd]
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        out.flush()
        start = time.monotonic()
        # Own session so a timeout can kill the tool, not just GNU time.
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        seconds = time.monotonic() - start
    ok = code in ok_codes
    return {
        "seconds": seconds, "rss_kib": read_rss(rss_file), "exit": code, "ok": ok,
        "error": None if ok else error_text(code, log, timeout), "log": str(log),
    }


def read_rss(rss_file: Path):
    """GNU time writes '%M' as the last line (after any exit-status note)."""
    try:
        return int(rss_file.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def error_text(code, log: Path, timeout: int) -> str:
    if code is None:
        return f"timed out after {timeout}s"
    lines = log.read_text(errors="replace").strip().splitlines()[1:]  # [0] is the command
    tail = [line for line in lines if line.strip()][-3:] or ["(no output)"]
    return f"exit {code}: " + " | ".join(line.strip() for line in tail)[-400:]


def capture(cmd, **kw) -> str:
    """Output of a short informational command, or '' if it fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, **kw)
        return (res.stdout or res.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def sync() -> float:
    """Flush dirty pages (untimed for the step) so the next step starts clean."""
    start = time.monotonic()
    os.sync()
    return time.monotonic() - start


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# ----------------------------------------------------------------------------
# Tools under test: how to init, back up and restore with each of them.


class Tool:
    name = ""
    backup_ok = (0,)
    restore_ok = (0,)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def env(self, repo: Path, cache: Path) -> dict:
        """Environment for every command; caches are kept per repository."""
        self.repo = repo
        env = dict(os.environ)
        env["XDG_CACHE_HOME"] = str(cache)
        return env

    def version_cmd(self) -> list:
        return [self.name, "--version"]

    def init_cmd(self) -> list:
        raise NotImplementedError

    def backup_cmd(self, path: Path, n: int) -> list:
        raise NotImplementedError

    def restore_cmd(self, target: Path, n: int) -> tuple[list, Path | None]:
        """(command, cwd) restoring backup number n (the latest)."""
        raise NotImplementedError

    def prune_cmd(self) -> list:
        """Forget every snapshot but the latest and free the space."""
        raise NotImplementedError

    def available(self) -> str | None:
        """None if the binary can be run, else why not."""
        exe = self.version_cmd()[0]
        return None if shutil.which(exe) else f"{exe} not found"


class Tresor(Tool):
    name = "tresor"
    backup_ok = (0, 3)  # 3 = some files unreadable, snapshot still written

    def env(self, repo, cache):
        env = super().env(repo, cache)
        env.update(TRESOR_REPOSITORY=str(repo), TRESOR_PASSWORD_FILE=str(PASSWORD_FILE))
        return env

    def version_cmd(self):
        return [self.cfg.tresor_bin, "--version"]

    def init_cmd(self):
        return [self.cfg.tresor_bin, "init"]

    def backup_cmd(self, path, n):
        return [self.cfg.tresor_bin, "backup", str(path)]

    def restore_cmd(self, target, n):
        return [self.cfg.tresor_bin, "restore", "latest", "--target", str(target)], None

    def prune_cmd(self):
        return [self.cfg.tresor_bin, "forget", "--keep-last", "1", "--prune"]


class Restic(Tool):
    name = "restic"
    backup_ok = (0, 3)  # 3 = some source files could not be read

    def env(self, repo, cache):
        env = super().env(repo, cache)
        env.update(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD_FILE=str(PASSWORD_FILE),
                   RESTIC_CACHE_DIR=str(cache / "restic"))
        return env

    def version_cmd(self):
        return ["restic", "version"]

    def init_cmd(self):
        return ["restic", "init"]

    def backup_cmd(self, path, n):
        return ["restic", "backup", str(path)]

    def restore_cmd(self, target, n):
        return ["restic", "restore", "latest", "--target", str(target)], None

    def prune_cmd(self):
        return ["restic", "forget", "--keep-last", "1", "--prune"]


class Rustic(Tool):
    name = "rustic"

    def env(self, repo, cache):
        env = super().env(repo, cache)
        env.update(RUSTIC_REPOSITORY=str(repo), RUSTIC_PASSWORD_FILE=str(PASSWORD_FILE),
                   RUSTIC_CACHE_DIR=str(cache / "rustic"), RUSTIC_NO_PROGRESS="true")
        return env

    def base(self):
        # self.repo is set by env(). Explicit flags too: they are rustic's documented, stable interface.
        return ["rustic", "-r", str(self.repo), "--password-file", str(PASSWORD_FILE),
                "--no-progress"]

    def init_cmd(self):
        return self.base() + ["init"]

    def backup_cmd(self, path, n):
        return self.base() + ["backup", str(path)]

    def restore_cmd(self, target, n):
        return self.base() + ["restore", "latest", str(target)], None

    def prune_cmd(self):
        return self.base() + ["forget", "--keep-last", "1", "--prune"]


class Borg(Tool):
    name = "borg"
    backup_ok = (0, 1)  # 1 = warning (e.g. a file changed while read)
    restore_ok = (0, 1)

    def env(self, repo, cache):
        env = super().env(repo, cache)
        env.update(BORG_REPO=str(repo), BORG_PASSPHRASE=PASSWORD_FILE.read_text().strip(),
                   BORG_BASE_DIR=str(cache / "borg"), BORG_DISPLAY_PASSPHRASE="n",
                   BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        return env

    def init_cmd(self):
        return ["borg", "init", "--encryption=repokey-blake2"]

    def backup_cmd(self, path, n):
        return ["borg", "create", f"::snap-{n}", str(path)]  # default compression: lz4

    def restore_cmd(self, target, n):
        return ["borg", "extract", f"::snap-{n}"], target  # borg extracts into cwd

    def prune_cmd(self):
        return ["sh", "-c", "borg prune --keep-last 1 && borg compact"]  # borg 1.2 frees space in compact


TOOL_CLASSES = {cls.name: cls for cls in (Tresor, Restic, Rustic, Borg)}


# ----------------------------------------------------------------------------
# Datasets


def prepare_dataset(name: str, cfg: Config) -> dict:
    """Create the dataset once (reused across invocations) and describe it."""
    path = DATA / name
    if name == "linux":
        prepare_linux(path)
        desc = "Linux 6.1 source tree (Debian linux-source-6.1)"
    elif name == "large":
        prepare_large(path, cfg.large_mb)
        desc = (f"{LARGE_FILES} large incompressible files; in half of them "
                f"~{int(DUP_FRACTION * 100)}% of the content repeats blocks of the "
                f"others at unaligned offsets")
    else:
        sys.exit(f"unknown dataset {name!r}")
    info = {"name": name, "path": str(path), "description": desc}
    info.update(scan_tree(path))
    return info


def prepare_linux(path: Path) -> None:
    marker = DATA / ".linux.ready"
    if marker.exists():
        return
    if not LINUX_TARBALL.exists():
        sys.exit(f"{LINUX_TARBALL} missing: apt-get install linux-source-6.1")
    remove(path)
    path.mkdir(parents=True)
    print(f"extracting {LINUX_TARBALL} …", flush=True)
    subprocess.run(["tar", "-xJf", str(LINUX_TARBALL), "-C", str(path),
                    "--strip-components=1"], check=True)
    os.sync()  # so the writeback is not charged to the first measured step
    marker.write_text("ok\n")


def prepare_large(path: Path, total_mb: int) -> None:
    """Generate LARGE_FILES files of pseudo-random bytes, seeded (reproducible).

    The first half are fresh random data. In the second half, DUP_FRACTION of
    each file is runs copied from the first half at unaligned offsets, so only
    content-defined chunking finds the duplicates. Runs are several MiB long
    because the peers' chunkers average 1-2 MiB per chunk.
    """
    marker = DATA / ".large.ready"
    spec = f"{total_mb} MiB, {LARGE_FILES} files, seed 42, v2\n"
    if marker.exists() and marker.read_text() == spec:
        return
    remove(marker)
    remove(path)
    path.mkdir(parents=True)
    print(f"generating {total_mb} MiB of large files …", flush=True)
    size = total_mb * MiB // LARGE_FILES
    rng = random.Random(42)
    half = LARGE_FILES // 2
    for i in range(LARGE_FILES):
        sources = [path / f"file{j:02d}.bin" for j in range(half)] if i >= half else []
        write_large_file(path / f"file{i:02d}.bin", size, rng, sources)
    os.sync()
    marker.write_text(spec)


def write_large_file(dest: Path, size: int, rng: random.Random, sources: list[Path]) -> None:
    """Interleave fresh random runs and copied runs, keeping copies at DUP_FRACTION."""
    written = copied = 0
    with open(dest, "wb") as out:
        while written < size:
            if sources and copied < DUP_FRACTION * written:
                chunk = copied_run(rng, sources, min(size - written, size // 3))
                copied += len(chunk)
            else:
                chunk = fresh_run(rng, size - written)
            out.write(chunk)
            written += len(chunk)


def fresh_run(rng: random.Random, limit: int) -> bytes:
    length = min(rng.randint(4 * MiB, 16 * MiB), limit)
    # randbytes of one huge int overflows; build it from 4 MiB pieces.
    return b"".join(rng.randbytes(min(4 * MiB, length - off)) for off in range(0, length, 4 * MiB))


def copied_run(rng: random.Random, sources: list[Path], limit: int) -> bytes:
    """4–16 MiB (at most `limit`) from a source file at a random unaligned offset."""
    length = max(1, min(rng.randint(4 * MiB, 16 * MiB), limit))
    src = rng.choice(sources)
    offset = rng.randrange(0, max(1, src.stat().st_size - length))
    with open(src, "rb") as f:
        f.seek(offset)
        return f.read(length)


def scan_tree(root: Path) -> dict:
    """Regular-file count and bytes (symlinks are not followed)."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_mode & 0o170000) == 0o100000:
                files += 1
                total += st.st_size
    return {"files": files, "bytes": total}


def warm_up(root: Path) -> None:
    """Read every file so all tools start from the same warm page cache.

    (Not `tar cf /dev/null`: GNU tar skips reading file data in that case.)
    """
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    while f.read(4 * MiB):
                        pass


# ----------------------------------------------------------------------------
# The 1% change: overwrite 8 bytes in the middle of every 100th non-empty file
# (sorted order), remembering the original bytes and times to undo it.


def mutation_targets(root: Path) -> list[Path]:
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink() and p.stat().st_size > 0:
                files.append(p)
    return sorted(files)[::100]


def mutate(root: Path) -> list[dict]:
    entries = []
    for p in mutation_targets(root):
        st = p.stat()
        offset = st.st_size // 2
        with open(p, "rb") as f:
            f.seek(offset)
            orig = f.read(8)
        entries.append({"path": str(p), "offset": offset, "orig": orig.hex(),
                        "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns})
    MUTATION_JOURNAL.write_text(json.dumps(entries))
    os.sync()  # journal must be durable before the data changes
    for e in entries:
        write_at(Path(e["path"]), e["offset"], mutated_bytes(e))
    return entries


def mutated_bytes(entry: dict) -> bytes:
    return bytes(b ^ 0xFF for b in bytes.fromhex(entry["orig"]))


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def revert_mutation() -> None:
    if not MUTATION_JOURNAL.exists():
        return
    for e in json.loads(MUTATION_JOURNAL.read_text()):
        p = Path(e["path"])
        write_at(p, e["offset"], bytes.fromhex(e["orig"]))
        os.utime(p, ns=(e["atime_ns"], e["mtime_ns"]))
    MUTATION_JOURNAL.unlink()


# ----------------------------------------------------------------------------
# Restore verification (untimed): same file count/bytes, and the changed bytes.


def verify_restore(target: Path, dataset: dict, mutated: list[dict]) -> str | None:
    """None if the restored tree looks right, else a short description."""
    got = scan_tree(target)
    if (got["files"], got["bytes"]) != (dataset["files"], dataset["bytes"]):
        return (f"restored {got['files']} files / {got['bytes']} bytes, expected "
                f"{dataset['files']} / {dataset['bytes']}")
    root = restored_root(target, Path(dataset["path"]))
    if root is None:
        return "could not locate the dataset inside the restore target"
    for e in mutated:
        rel = Path(e["path"]).relative_to(dataset["path"])
        try:
            with open(root / rel, "rb") as f:
                f.seek(e["offset"])
                if f.read(8) != mutated_bytes(e):
                    return f"{rel}: restored content is not the latest snapshot's"
        except OSError as exc:
            return f"{rel}: {exc.strerror}"
    return None


def restored_root(target: Path, source: Path) -> Path | None:
    """Tools restore either the full absolute path, the basename or the contents."""
    for cand in (target / source.relative_to("/"), target / source.name, target):
        if cand.is_dir() and any(cand.iterdir()):
            probe = next(source.iterdir()).name
            if (cand / probe).exists():
                return cand
    return None


# ----------------------------------------------------------------------------
# Measuring one tool on one dataset (one run)


class Recorder:
    """Collects measurement records and saves them after every tool run."""

    def __init__(self, meta: dict) -> None:
        self.data = {"meta": meta, "records": []}

    def add(self, **rec) -> dict:
        self.data["records"].append(rec)
        return rec

    def save(self) -> None:
        RESULTS.write_text(json.dumps(self.data, indent=1))


def bench_tool(tool: Tool, ds: dict, run: int, rec: Recorder, cfg: Config) -> None:
    repo = REPOS / f"{tool.name}-{ds['name']}"
    cache = CACHES / f"{tool.name}-{ds['name']}"
    for p in (repo, cache, TMPFS_RESTORE, DISK_RESTORE):
        remove(p)
    cache.mkdir(parents=True)
    base = dict(dataset=ds["name"], tool=tool.name, run=run)
    missing = tool.available()
    if missing:
        rec.add(**base, phase="init", ok=False, error=missing)
        print(f"  [{ds['name']}/{tool.name}/run {run}] skipped: {missing}", flush=True)
        return
    warm_up(Path(ds["path"]))
    try:
        run_steps(tool, ds, repo, cache, base, rec, cfg)
    except Exception as exc:  # a harness problem must not lose the other tools' results
        rec.add(**base, phase="harness", ok=False, error=f"harness error: {exc!r}")
        print(f"  [{ds['name']}/{tool.name}/run {run}] harness error: {exc!r}", flush=True)
    finally:
        revert_mutation()
        for p in (repo, cache, TMPFS_RESTORE, DISK_RESTORE):
            remove(p)  # repositories are big; their size is already recorded
        sync()


def run_steps(tool, ds, repo, cache, base, rec, cfg) -> None:
    """init, 3 backups, repo size, 2 restores, forget + prune and the size after;
    a failed init/backup ends the run."""
    env = tool.env(repo, cache)
    src = Path(ds["path"])
    step = lambda phase, cmd, ok=(0,), cwd=None: measured_step(
        rec, base, phase, cmd, env, ok, cwd, cfg)
    if not step("init", tool.init_cmd()):
        return
    if not step("backup_initial", tool.backup_cmd(src, 1), tool.backup_ok):
        return
    if not step("backup_nochange", tool.backup_cmd(src, 2), tool.backup_ok):
        return
    mutated = mutate(src)
    if not step("backup_changed", tool.backup_cmd(src, 3), tool.backup_ok):
        return
    rec.add(**base, phase="repo_size", ok=True, bytes=du_bytes(repo))
    for phase, target in (("restore_tmpfs", TMPFS_RESTORE), ("restore_disk", DISK_RESTORE)):
        target.mkdir(parents=True)
        cmd, cwd = tool.restore_cmd(target, 3)
        r = step(phase, cmd, tool.restore_ok, cwd or None)
        if r:
            check_restore(r, target, ds, mutated)
        remove(target)
        sync()
    if step("forget_prune", tool.prune_cmd(), tool.backup_ok):
        rec.add(**base, phase="repo_size_pruned", ok=True, bytes=du_bytes(repo))


def check_restore(r: dict, target: Path, ds: dict, mutated: list[dict]) -> None:
    """A restore that exits 0 but restores the wrong tree counts as failed."""
    problem = verify_restore(target, ds, mutated)
    if problem:
        r.update(ok=False, verify_error=problem, error=f"restore check failed: {problem}")
        print(f"    restore check FAILED: {problem}", flush=True)


def measured_step(rec, base, phase, cmd, env, ok_codes, cwd, cfg) -> dict | None:
    """Run one timed step; the record if it succeeded, else None."""
    log = LOGS / f"run{base['run']}-{base['dataset']}-{base['tool']}-{phase}.log"
    print(f"  [{base['dataset']}/{base['tool']}/run {base['run']}] {phase} …", end="", flush=True)
    res = run_measured(cmd, log, env=env, cwd=cwd, ok_codes=ok_codes, timeout=cfg.timeout)
    res["sync_s"] = sync()
    r = rec.add(**base, phase=phase, **res)
    print(f" {res['seconds']:.2f}s" if res["ok"] else f" FAILED ({res['error']})", flush=True)
    return r if res["ok"] else None


def du_bytes(path: Path) -> int | None:
    out = capture(["du", "-sb", str(path)])
    try:
        return int(out.split()[0])
    except (IndexError, ValueError):
        return None


# ----------------------------------------------------------------------------
# Baselines: cp -a to tmpfs and disk, read+hash floor.


def bench_baselines(ds: dict, run: int, rec: Recorder, cfg: Config) -> None:
    src = Path(ds["path"])
    base = dict(dataset=ds["name"], tool="baseline", run=run)
    warm_up(src)
    for phase, dest in (("copy_tmpfs", TMPFS_COPY), ("copy_disk", DISK_COPY)):
        remove(dest)
        measured_step(rec, base, phase, ["cp", "-a", str(src), str(dest)], None, (0,), None, cfg)
        remove(dest)
        sync()
    if not shutil.which("b3sum"):
        rec.add(**base, phase="hash_floor", ok=False, error="b3sum not found")
        return
    # NUL-separated list so odd file names survive; xargs batches many files per b3sum.
    script = f"find {sh_quote(src)} -type f -print0 | xargs -0 b3sum --num-threads 2 >/dev/null"
    measured_step(rec, base, "hash_floor", ["bash", "-o", "pipefail", "-c", script],
                  None, (0,), None, cfg)


def make_blob_files(path: Path, n: int) -> None:
    """n files of 256 random bytes: one data blob each (every tool chunks
    a small file into one chunk)."""
    if (path / ".complete").exists():
        return
    remove(path)
    rng = random.Random(n)
    for i in range(n):
        d = path / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"{i:07d}").write_bytes(rng.randbytes(256))
    (path / ".complete").write_text("")


def backup_half(step, tool: Tool, path: Path) -> bool:
    """A second backup without half of the directories, so that the prune
    after forgetting the first snapshot has half the blobs to remove."""
    hidden = path.parent / (path.name + ".hidden")
    remove(hidden)
    hidden.mkdir()
    dirs = sorted(d for d in path.iterdir() if d.is_dir())
    for d in dirs[len(dirs) // 2:]:
        d.rename(hidden / d.name)
    try:
        return bool(step("backup_changed", tool.backup_cmd(path, 2), tool.backup_ok))
    finally:
        for d in hidden.iterdir():
            d.rename(path / d.name)
        hidden.rmdir()


def bench_prune_memory(rec: Recorder, cfg: Config) -> None:
    """Peak memory of a prune over repositories of n small blobs; the slope
    between two sizes is the memory each blob costs."""
    for n in cfg.blob_counts:
        path = DATA / f"blobs-{n}"
        make_blob_files(path, n)
        for tname in cfg.tools:
            tool = TOOL_CLASSES[tname](cfg)
            repo, cache = REPOS / f"{tname}-blobs", CACHES / f"{tname}-blobs"
            for p in (repo, cache):
                remove(p)
            cache.mkdir(parents=True)
            if tool.available():
                continue
            base = dict(dataset=f"blobs{n}", tool=tname, run=1)
            env = tool.env(repo, cache)
            step = lambda phase, cmd, ok=(0,): measured_step(rec, base, phase, cmd, env, ok, None, cfg)
            if (step("init", tool.init_cmd()) and step("backup_initial", tool.backup_cmd(path, 1), tool.backup_ok)
                    and backup_half(step, tool, path)):
                step("prune", tool.prune_cmd(), tool.backup_ok)
            for p in (repo, cache):
                remove(p)
            rec.save()


def sh_quote(p: Path) -> str:
    return "'" + str(p).replace("'", "'\\''") + "'"


# ----------------------------------------------------------------------------
# PostgreSQL: tresor's physical backup (`pg backup` / `pg restore`) and logical
# backup (postgres:// source) next to pg_basebackup and pg_dump/pg_restore run
# directly (and restic fed by pg_dump), on one pgbench database.

PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_WORK = WORK / "pg"
PG_SRC = PG_WORK / "cluster"        # the measured cluster's data directory
PG_RESTORED = PG_WORK / "restored"  # data directory of a restored cluster
PG_SOCK = PG_WORK / "sock"          # unix sockets of all servers (clients use TCP)
PG_LOGS = PG_WORK / "logs"          # server logs (written by the postgres user)
PG_BASEBACKUP = PG_WORK / "basebackup"
PG_DUMP_FILE = PG_WORK / "bench.dump"
# Readable by postgres: a restored cluster's restore_command runs tresor as postgres.
PG_PASSWORD = PG_WORK / "password"
PG_DB = "bench"


def as_postgres(cmd: list) -> list:
    """Server programs run as the postgres user when we are root (initdb and
    postgres refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if os.geteuid() == 0 else list(map(str, cmd))


def chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_env() -> dict:
    """Environment for every PostgreSQL-related command: this PostgreSQL's
    programs first on PATH (tresor takes them from TRESOR_PG_BIN) and no
    inherited PG*/TRESOR_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TRESOR_", "RESTIC_"))}
    env["PATH"] = f"{PG_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["TRESOR_PG_BIN"] = str(PG_BIN)
    return env


class PgServer:
    """One PostgreSQL server on a data directory, on 127.0.0.1:port."""

    def __init__(self, datadir: Path, port: int, name: str) -> None:
        self.datadir, self.port, self.log = datadir, port, PG_LOGS / f"{name}.log"

    def url(self, db: str | None = None) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}" + (f"/{db}" if db else "")

    def conn(self) -> list:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def pg_ctl(self, *args, check=True) -> int:
        cmd = as_postgres([PG_BIN / "pg_ctl", "-D", self.datadir, *args])
        with open(PG_LOGS / "pg_ctl.log", "ab") as out:
            return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=pg_env(), check=check).returncode

    def start(self, wait: bool = True) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {PG_SOCK}"
        self.pg_ctl("-l", self.log, "-o", opts, "start", "-w" if wait else "-W")

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self.pg_ctl("stop", "-m", "fast", "-w", check=False)

    def running(self) -> bool:
        return self.pg_ctl("status", check=False) == 0

    def psql(self, db: str, sql: str, timeout: int = 600) -> str:
        res = subprocess.run([str(PG_BIN / "psql"), *self.conn(), "-d", db, "-XAtq", "-c", sql],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, env=pg_env(),
                             timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {res.stderr.strip()}")
        return res.stdout.strip()

    def try_psql(self, db: str, sql: str) -> str | None:
        try:
            return self.psql(db, sql, timeout=30)
        except (RuntimeError, subprocess.SubprocessError):
            return None

    def start_until_promoted(self, timeout: int) -> tuple[float, str | None]:
        """Start the server; seconds until it answers `pg_is_in_recovery()`
        with f (recovery done, read-write), and an error text if it did not."""
        start = time.monotonic()
        self.start(wait=False)
        last_status = start
        while time.monotonic() - start < timeout:
            if self.try_psql("postgres", "SELECT pg_is_in_recovery()") == "f":
                return time.monotonic() - start, None
            if time.monotonic() - last_status > 2:
                last_status = time.monotonic()
                if not self.running():
                    return time.monotonic() - start, "server stopped: " + self.log_tail()
            time.sleep(0.05)
        return time.monotonic() - start, f"not promoted after {timeout}s: " + self.log_tail()

    def log_tail(self) -> str:
        try:
            lines = [l.strip() for l in self.log.read_text(errors="replace").splitlines() if l.strip()]
        except OSError:
            return "(no server log)"
        return " | ".join(lines[-3:])[-400:]


class PgBench:
    """The measurements of one run against the loaded source cluster."""

    def __init__(self, src: PgServer, run: int, rec: Recorder, cfg: Config) -> None:
        self.src, self.run, self.rec, self.cfg = src, run, rec, cfg
        self.rows = cfg.pg_scale * 100_000

    def step(self, tool: str, phase: str, cmd: list, env=None, ok=(0,)) -> dict | None:
        base = dict(dataset="pg", tool=tool, run=self.run)
        return measured_step(self.rec, base, phase, [str(c) for c in cmd], env or pg_env(), ok, None, self.cfg)

    def fail(self, tool: str, phase: str, error: str) -> None:
        self.rec.add(dataset="pg", tool=tool, run=self.run, phase=phase, ok=False, error=error)
        print(f"  [pg/{tool}/run {self.run}] {phase} FAILED ({error})", flush=True)

    def quiesce(self) -> None:
        """Untimed before every backup: flush PostgreSQL's dirty buffers and the page cache."""
        self.src.psql("postgres", "CHECKPOINT")
        sync()

    def guarded(self, tool: str, fn) -> None:
        """A harness problem must not lose the other measurements."""
        try:
            fn()
        except Exception as exc:
            self.fail(tool, "harness", f"harness error: {exc!r}")
        finally:
            self.rec.save()

    def tresor(self, repo: Path) -> list:
        return [self.cfg.tresor_bin, "--repo", repo, "--password-file", PG_PASSWORD]

    def fresh_repo(self, name: str) -> tuple[Path, Path]:
        repo, cache = REPOS / name, CACHES / name
        for p in (repo, cache):
            remove(p)
        cache.mkdir(parents=True)
        return repo, cache

    def count_check(self, srv: PgServer, db: str) -> str | None:
        """None if db holds the pgbench_accounts rows loaded, else what is wrong."""
        got = srv.try_psql(db, "SELECT count(*) FROM pgbench_accounts")
        return None if got == str(self.rows) else f"pgbench_accounts in {db}: {got!r} rows, expected {self.rows}"

    def drop_db(self, db: str) -> None:
        self.src.psql("postgres", f'DROP DATABASE IF EXISTS "{db}"')

    # -- physical ------------------------------------------------------------

    def start_restored(self, tool: str, restore: dict) -> None:
        """Start a server on PG_RESTORED, time it until promoted, check the rows."""
        os.chmod(PG_RESTORED, 0o700)
        chown_postgres(PG_RESTORED)
        srv = PgServer(PG_RESTORED, free_port(), f"run{self.run}-{tool}-restored")
        try:
            seconds, error = srv.start_until_promoted(self.cfg.timeout)
            problem = error or self.count_check(srv, PG_DB)
            self.rec.add(dataset="pg", tool=tool, run=self.run, phase="phys_start", seconds=seconds,
                         total_seconds=restore["seconds"] + seconds, ok=problem is None,
                         error=None if problem is None else f"restored cluster: {problem}", log=str(srv.log))
            print(f"  [pg/{tool}/run {self.run}] phys_start … {seconds:.2f}s"
                  + ("" if problem is None else f" FAILED ({problem})"), flush=True)
            if problem:
                restore.update(ok=False, verify_error=problem, error=f"restore check failed: {problem}")
        finally:
            srv.stop()
            remove(PG_RESTORED)
            sync()

    def physical_direct(self) -> None:
        tool = "pg_basebackup"
        remove(PG_BASEBACKUP)
        self.quiesce()
        r = self.step(tool, "phys_backup", [PG_BIN / "pg_basebackup", *self.src.conn(), "-D", PG_BASEBACKUP,
                                            "-Ft", "-X", "fetch", "-c", "fast"])
        if not r:
            return
        r["bytes"] = du_bytes(PG_BASEBACKUP)
        remove(PG_RESTORED)
        PG_RESTORED.mkdir(mode=0o700)
        r = self.step(tool, "phys_restore", ["tar", "-x", "-f", PG_BASEBACKUP / "base.tar", "-C", PG_RESTORED])
        remove(PG_BASEBACKUP)
        if r:
            self.start_restored(tool, r)
        remove(PG_RESTORED)

    def physical_tresor(self) -> None:
        tool = "tresor"
        repo, cache = self.fresh_repo("tresor-pg")
        env = pg_env() | {"XDG_CACHE_HOME": str(cache)}
        t = self.tresor(repo)
        try:
            if not self.step(tool, "phys_init", [*t, "init"], env):
                return
            sizes = []
            for phase in ("phys_backup", "phys_backup_nochange"):
                self.quiesce()
                r = self.step(tool, phase, [*t, "pg", "backup", self.src.url()], env)
                if not r:
                    return
                sizes.append(du_bytes(repo))
                r["bytes"] = sizes[-1]
                if len(sizes) == 2 and None not in sizes:
                    r["added_bytes"] = sizes[1] - sizes[0]
            remove(PG_RESTORED)
            r = self.step(tool, "phys_restore", [*t, "pg", "restore", "--immediate", "--no-archive",
                                                 "--target", PG_RESTORED], env)
            if r:
                # The restored server's restore_command runs tresor as postgres.
                chown_postgres(repo)
                self.start_restored(tool, r)
        finally:
            remove(PG_RESTORED)
            for p in (repo, cache):
                remove(p)
            sync()

    # -- logical -------------------------------------------------------------

    def restore_into(self, tool: str, db: str, cmd: list, env=None) -> None:
        """Timed restore into a new database db, then the row check; db is dropped."""
        self.drop_db(db)
        try:
            r = self.step(tool, "logical_restore", cmd, env)
            if r:
                problem = self.count_check(self.src, db)
                if problem:
                    r.update(ok=False, verify_error=problem, error=f"restore check failed: {problem}")
                    print(f"    restore check FAILED: {problem}", flush=True)
        finally:
            self.drop_db(db)
            sync()

    def logical_direct(self) -> None:
        tool = "pg_dump"
        remove(PG_DUMP_FILE)
        self.quiesce()
        r = self.step(tool, "logical_backup", [PG_BIN / "pg_dump", *self.src.conn(), "-Fc", "-f", PG_DUMP_FILE, PG_DB])
        if r:
            r["bytes"] = PG_DUMP_FILE.stat().st_size
            conn = " ".join(self.src.conn())
            # CREATE DATABASE is timed, as it is inside tresor's restore; the
            # pg_restore flags are the ones tresor gives it.
            script = (f"{PG_BIN}/createdb {conn} bench_direct && "
                      f"{PG_BIN}/pg_restore {conn} --no-owner --exit-on-error -d bench_direct {sh_quote(PG_DUMP_FILE)}")
            self.restore_into(tool, "bench_direct", ["bash", "-o", "pipefail", "-c", script])
        remove(PG_DUMP_FILE)

    def logical_tresor(self) -> None:
        tool = "tresor"
        repo, cache = self.fresh_repo("tresor-pgdump")
        env = pg_env() | {"XDG_CACHE_HOME": str(cache)}
        t = self.tresor(repo)
        try:
            if not self.step(tool, "logical_init", [*t, "init"], env):
                return
            if not self.logical_backups(tool, repo, env, [*t, "backup", self.src.url(PG_DB)]):
                return
            self.restore_into(tool, "bench_tresor", [*t, "restore", "latest", "--to", self.src.url("bench_tresor")], env)
        finally:
            for p in (repo, cache):
                remove(p)
            sync()

    def logical_restic(self) -> None:
        tool = "restic"
        if not shutil.which("restic"):
            self.fail(tool, "logical_init", "restic not found")
            return
        repo, cache = self.fresh_repo("restic-pgdump")
        env = pg_env() | {"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(PG_PASSWORD),
                          "RESTIC_CACHE_DIR": str(cache / "restic")}
        conn = " ".join(self.src.conn())
        dump = f"{PG_BIN}/pg_dump {conn} -Fc {PG_DB} | restic backup --stdin --stdin-filename bench.dump"
        try:
            if not self.step(tool, "logical_init", ["restic", "init"], env):
                return
            if not self.logical_backups(tool, repo, env, ["bash", "-o", "pipefail", "-c", dump]):
                return
            script = (f"{PG_BIN}/createdb {conn} bench_restic && restic dump latest bench.dump | "
                      f"{PG_BIN}/pg_restore {conn} --no-owner --exit-on-error -d bench_restic")
            self.restore_into(tool, "bench_restic", ["bash", "-o", "pipefail", "-c", script], env)
        finally:
            for p in (repo, cache):
                remove(p)
            sync()

    def logical_backups(self, tool, repo, env, cmd, ok=(0,)) -> bool:
        """A backup, then one with nothing changed; repository sizes after each."""
        sizes = []
        for phase in ("logical_backup", "logical_backup_nochange"):
            self.quiesce()
            r = self.step(tool, phase, cmd, env, ok)
            if not r:
                return False
            sizes.append(du_bytes(repo))
            r["bytes"] = sizes[-1]
            if len(sizes) == 2 and None not in sizes:
                r["added_bytes"] = sizes[1] - sizes[0]
        return True


def pg_setup(cfg: Config) -> tuple[PgServer, dict]:
    """A fresh cluster with the pgbench database loaded; facts about it."""
    if not (PG_BIN / "initdb").exists():
        sys.exit(f"{PG_BIN}/initdb missing: apt-get install postgresql-15 (or set BENCH_PG_BIN)")
    pg_teardown()
    remove(PG_WORK)
    for d in (PG_WORK, PG_SOCK, PG_LOGS):
        d.mkdir(parents=True)
    PG_PASSWORD.write_text("tresor-bench-password\n")
    os.chmod(PG_PASSWORD, 0o600)
    chown_postgres(PG_SOCK)
    chown_postgres(PG_LOGS)
    chown_postgres(PG_PASSWORD)
    PG_SRC.mkdir(mode=0o700)
    chown_postgres(PG_SRC)
    log = LOGS / "pg-setup.log"
    with open(log, "wb") as out:
        subprocess.run(as_postgres([PG_BIN / "initdb", "-D", PG_SRC, "-A", "trust", "-U", "postgres"]),
                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=pg_env(), check=True)
    srv = PgServer(PG_SRC, free_port(), "source")
    srv.start()
    print(f"pg: loading pgbench scale {cfg.pg_scale} on port {srv.port} …", flush=True)
    start = time.monotonic()
    with open(log, "ab") as out:
        for cmd in ([PG_BIN / "createdb", *srv.conn(), PG_DB],
                    [PG_BIN / "pgbench", *srv.conn(), "-i", "-s", str(cfg.pg_scale), "-q", PG_DB]):
            subprocess.run(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, env=pg_env(), check=True)
    load_s = time.monotonic() - start
    srv.psql("postgres", "CHECKPOINT")
    os.sync()
    facts = {
        "scale": cfg.pg_scale, "rows": cfg.pg_scale * 100_000, "load_seconds": load_s,
        "db_bytes": int(srv.psql("postgres", f"SELECT pg_database_size('{PG_DB}')")),
        "cluster_bytes": du_bytes(PG_SRC),
        "server_version": srv.psql("postgres", "SHOW server_version"),
    }
    print(f"pg: loaded in {load_s:.1f}s, database {facts['db_bytes'] / MiB:.0f} MiB, "
          f"data directory {facts['cluster_bytes'] / MiB:.0f} MiB", flush=True)
    return srv, facts


def pg_teardown() -> None:
    """Stop every server this benchmark may have left running."""
    for datadir in (PG_RESTORED, PG_SRC):
        if (datadir / "postmaster.pid").exists():
            PgServer(datadir, 0, "teardown").stop()


def bench_pg(rec: Recorder, cfg: Config) -> None:
    """Every PostgreSQL measurement, cfg.runs times; results into rec and rec.data['meta']['pg']."""
    for d in (REPOS, CACHES, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    srv, facts = pg_setup(cfg)
    try:
        versions = {"tresor": (capture([cfg.tresor_bin, "--version"]).splitlines() or ["not found"])[0],
                    "PostgreSQL": capture([str(PG_BIN / "postgres"), "--version"])}
        if "restic" in cfg.tools:
            versions["restic"] = (capture(["restic", "version"]).splitlines() or ["not found"])[0]
        versions["tresor (git)"] = git_version()
        rec.data["meta"]["pg"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "runs": cfg.runs, "versions": versions, **facts,
        }
        for run in range(1, cfg.runs + 1):
            b = PgBench(srv, run, rec, cfg)
            physical = [("pg_basebackup", b.physical_direct), ("tresor", b.physical_tresor)]
            logical = [("pg_dump", b.logical_direct), ("tresor", b.logical_tresor)]
            if "restic" in cfg.tools:
                logical.append(("restic", b.logical_restic))
            # Rotate the order per run so no tool always goes first.
            for group in (physical, logical):
                k = (run - 1) % len(group)
                for tool, fn in group[k:] + group[:k]:
                    b.guarded(tool, fn)
    finally:
        pg_teardown()
        rec.save()


# ----------------------------------------------------------------------------
# Machine and version information for the report header


def machine_info() -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(next(l.split()[1] for l in meminfo.splitlines() if l.startswith("MemTotal")))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.machine())
    fs = capture(["df", "--output=fstype", str(WORK)]).splitlines()
    return {"nproc": os.cpu_count(), "mem_bytes": mem_kib * 1024, "kernel": platform.release(),
            "cpu": cpu, "work_fs": fs[-1].strip() if fs else "?",
            "os": capture(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"])}


def versions(cfg: Config) -> dict:
    out = {}
    for name in cfg.tools:
        tool = TOOL_CLASSES[name](cfg)
        out[name] = (capture(tool.version_cmd()).splitlines() or ["not found"])[0]
    out["b3sum"] = (capture(["b3sum", "--version"]).splitlines() or ["not found"])[0]
    out["cp"] = (capture(["cp", "--version"]).splitlines() or ["?"])[0]
    out["tresor (git)"] = git_version()
    return out


def git_version() -> str:
    """The commit tresor was built from: BENCH_TRESOR_REV if the binary was not
    built from this working tree (e.g. from `git archive HEAD`), else HEAD."""
    if os.environ.get("BENCH_TRESOR_REV"):
        return os.environ["BENCH_TRESOR_REV"]
    commit = capture(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = capture(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"])
    return (commit if len(commit) < 20 else "no commit") + (" (dirty)" if dirty else "")


# ----------------------------------------------------------------------------
# Main flow


def cmd_blobs(cfg: Config) -> None:
    """Measure prune memory per blob again, into the existing results."""
    data = json.loads(RESULTS.read_text())
    data["records"] = [r for r in data["records"] if not r["dataset"].startswith("blobs")]
    rec = Recorder(data["meta"])
    rec.data = data
    bench_prune_memory(rec, cfg)
    rec.save()
    write_report(rec.data, cfg.out)


def cmd_pg(cfg: Config) -> None:
    """The PostgreSQL measurements alone, into the existing results (their
    earlier PostgreSQL records replaced; everything else kept)."""
    if RESULTS.exists():
        data = json.loads(RESULTS.read_text())
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        data = {"meta": new_meta(cfg), "records": []}
    data["records"] = [r for r in data["records"] if r["dataset"] != "pg"]
    rec = Recorder(data["meta"])
    rec.data = data
    bench_pg(rec, cfg)
    write_report(rec.data, cfg.out)
    print(f"results: {RESULTS}\nreport:  {cfg.out}")


def new_meta(cfg: Config) -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": versions(cfg), "runs": cfg.runs,
            "quick": cfg.quick, "tools": cfg.tools, "datasets": {}}


def cmd_run(cfg: Config) -> None:
    if cfg.datasets == ["pg"]:
        return cmd_pg(cfg)  # only PostgreSQL: keep the file benchmarks' results
    for d in (DATA, REPOS, CACHES, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    if not PASSWORD_FILE.exists():
        PASSWORD_FILE.write_text("tresor-bench-password\n")
    revert_mutation()  # a previous run may have died with a mutated dataset
    meta = new_meta(cfg)
    rec = Recorder(meta)
    if "pg" not in cfg.datasets and RESULTS.exists():
        # Keep the PostgreSQL results of an earlier `bench.py pg` (they carry their own date).
        old = json.loads(RESULTS.read_text())
        if "pg" in old["meta"]:
            meta["pg"] = old["meta"]["pg"]
            rec.data["records"] += [r for r in old["records"] if r["dataset"] == "pg"]
    for name in (d for d in cfg.datasets if d != "pg"):
        ds = prepare_dataset(name, cfg)
        meta["datasets"][name] = ds
        print(f"dataset {name}: {ds['files']} files, {ds['bytes']} bytes", flush=True)
        for run in range(1, cfg.runs + 1):
            bench_baselines(ds, run, rec, cfg)
            # Rotate tool order per run so no tool always runs first/last.
            k = (run - 1) % len(cfg.tools)
            for tname in cfg.tools[k:] + cfg.tools[:k]:
                bench_tool(TOOL_CLASSES[tname](cfg), ds, run, rec, cfg)
                rec.save()
    if cfg.blob_counts:
        bench_prune_memory(rec, cfg)
    if "pg" in cfg.datasets:
        bench_pg(rec, cfg)
    rec.save()
    write_report(rec.data, cfg.out)
    print(f"results: {RESULTS}\nreport:  {cfg.out}")


def write_report(data: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(Report(data).render())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run the benchmark (settings from BENCH_* env)")
    sub.add_parser("blobs", help="measure prune memory per blob again, into the existing results")
    sub.add_parser("pg", help="only the PostgreSQL measurements, into the existing results")
    rp = sub.add_parser("report", help="regenerate the markdown from results JSON")
    rp.add_argument("--results", type=Path, default=RESULTS)
    rp.add_argument("--out", type=Path, default=None, help="default: BENCH_OUT or docs/BENCHMARKS.md")
    args = ap.parse_args()
    if args.cmd == "run":
        cmd_run(Config())
    elif args.cmd == "blobs":
        cmd_blobs(Config())
    elif args.cmd == "pg":
        cmd_pg(Config())
    else:
        out = args.out or Path(os.environ.get("BENCH_OUT", REPO_ROOT / "docs" / "BENCHMARKS.md"))
        write_report(json.loads(args.results.read_text()), out)
        print(f"report: {out}")


# ----------------------------------------------------------------------------
# Markdown report (pure function of the results JSON)


def fmt_s(x) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def fmt_ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def fmt_mib(n) -> str:
    return "—" if n is None else f"{n / MiB:,.1f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


class Report:
    def __init__(self, data: dict) -> None:
        self.meta = data["meta"]
        self.records = data["records"]
        self.tools = self.meta["tools"]
        self.peers = [t for t in self.tools if t != "tresor"]

    # -- aggregation ---------------------------------------------------------

    def recs(self, ds, tool, phase):
        return [r for r in self.records
                if (r["dataset"], r["tool"], r["phase"]) == (ds, tool, phase)]

    def median(self, ds, tool, phase, field="seconds"):
        vals = [r[field] for r in self.recs(ds, tool, phase)
                if r.get("ok") and r.get(field) is not None]
        return statistics.median(vals) if vals else None

    def peak_rss(self, ds, tool, phases):
        """Median over runs of the largest peak RSS (bytes) among `phases`."""
        per_run = {}
        for ph in phases:
            for r in self.recs(ds, tool, ph):
                if r.get("ok") and r.get("rss_kib") is not None:
                    per_run[r["run"]] = max(per_run.get(r["run"], 0), r["rss_kib"] * 1024)
        return statistics.median(per_run.values()) if per_run else None

    def failed(self, ds, tool, phase) -> bool:
        return any(not r.get("ok") for r in self.recs(ds, tool, phase))

    def tool_failed(self, ds, tool) -> bool:
        """Any failed step: later steps of that run were skipped."""
        return any(not r.get("ok") for r in self.records if (r["dataset"], r["tool"]) == (ds, tool))

    def text(self, ds, tool, value, fmt) -> str:
        """A value, or FAIL if the tool has no value because a step failed."""
        if value is not None:
            return fmt(value)
        return "FAIL" if self.tool_failed(ds, tool) else "—"

    def partial(self, ds, tool, text: str) -> str:
        """Mark a value that exists although some step of the tool failed."""
        return text + " ⚠" if text != "FAIL" and self.tool_failed(ds, tool) else text

    def cell(self, ds, tool, phase, value, fmt) -> str:
        text = fmt(value) if value is not None else ("FAIL" if self.tool_failed(ds, tool) else "—")
        if value is not None and self.failed(ds, tool, phase):
            text += " ⚠"
        return text

    def best_peer(self, values: dict):
        """(name, value) of the best peer with data; smaller is better."""
        have = {t: v for t, v in values.items() if t in self.peers and v is not None}
        if not have:
            return None, None
        name = min(have, key=have.get)
        return name, have[name]

    # -- sections ------------------------------------------------------------

    def render(self) -> str:
        parts = [self.header()]
        for ds in self.meta["datasets"]:
            parts.append(self.dataset_section(ds))
        parts.append(self.prune_memory_section())
        if self.meta.get("pg"):
            parts.append(self.pg_section())
        # The bucket row is measured apart (bench/bucket.py) and kept as it was written.
        bucket = Path(__file__).resolve().parent / "bucket.md"
        if bucket.exists():
            parts.append("## Bucket backup: tresor and rclone sync\n\n" + bucket.read_text())
        parts += [self.targets_section(), self.problems_section()]
        return "\n".join(parts).rstrip() + "\n"

    def header(self) -> str:
        m, v = self.meta["machine"], self.meta["versions"]
        lines = [
            "# tresor benchmarks", "",
            "Generated by `bench/run.sh` (raw data: `bench/work/results.json`; "
            "regenerate with `python3 bench/bench.py report`).", "",
            f"- **Date:** {self.meta['date']}",
            f"- **Machine:** {m['nproc']} CPUs ({m['cpu']}), {m['mem_bytes'] / (1 << 30):.1f} GiB RAM, "
            f"kernel {m['kernel']}, {m.get('os', '')}; work dir on {m['work_fs']}, tmpfs at /dev/shm",
            f"- **Runs:** {self.meta['runs']} per measurement, median reported"
            + (" (quick mode)" if self.meta.get("quick") else ""),
            "- **Caches:** warm. Dropping the page cache is not reliable here, so every tool "
            "(and every baseline) starts right after a full read of the dataset.",
            "- Each tool starts from a fresh repository on disk; times exclude the `sync` run "
            "after each step (flushing is untimed for every tool alike).",
            "- Default settings for every tool. Compression defaults: restic ≥0.14 and rustic "
            "zstd (auto), borg lz4; borg uses `repokey-blake2` encryption.",
            "- The 1% change overwrites 8 bytes in the middle of every 100th non-empty file "
            "(sorted order).",
            "- \"Paired\" figures in the sections below come from whole-process timing of two "
            "commands run in turn (A B A B …), the A/B ratio taken pair by pair and its median "
            "quoted, so a drift in the machine's speed cancels out; `/usr/bin/time -v` in such an "
            "alternating loop repeats them.", "",
            "| tool | version |", "|---|---|",
        ]
        for name, ver in v.items():
            lines.append(f"| {name} | `{ver}` |")
        lines += ["", "| dataset | files | bytes | description |", "|---|---:|---:|---|"]
        for ds in self.meta["datasets"].values():
            lines.append(f"| {ds['name']} | {ds['files']:,} | {ds['bytes']:,} "
                         f"({ds['bytes'] / MiB:,.1f} MiB) | {ds['description']} |")
        return "\n".join(lines) + "\n"

    def dataset_section(self, ds: str) -> str:
        return "\n".join([f"## Dataset `{ds}`", "", self.time_table(ds),
                          self.memory_table(ds), self.repo_table(ds), self.baseline_table(ds)])

    def table_head(self, first: str, extra: list[str]) -> list[str]:
        cols = [first] + self.tools + extra
        return ["| " + " | ".join(cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]

    def time_table(self, ds: str) -> str:
        lines = ["### Time (seconds, median; lower is better)", "",
                 *self.table_head("phase", ["tresor vs best peer", "best peer"])]
        for phase, label in PHASES:
            vals = {t: self.median(ds, t, phase) for t in self.tools}
            peer, pv = self.best_peer(vals)
            cells = [self.cell(ds, t, phase, vals[t], fmt_s) for t in self.tools]
            lines.append(f"| {label} | " + " | ".join(cells)
                         + f" | {fmt_ratio(ratio(pv, vals.get('tresor')))} | {peer or '—'} |")
        lines += ["", "_tresor vs best peer = best peer's time / tresor's time (>1: tresor faster)._", ""]
        return "\n".join(lines)

    def memory_table(self, ds: str) -> str:
        lines = ["### Peak memory (MiB RSS, median of per-run maxima)", "",
                 *self.table_head("operation", ["tresor / smallest peer", "smallest peer"])]
        for label, phases in (("backup", BACKUP_PHASES), ("restore", RESTORE_PHASES), ("forget + prune", PRUNE_PHASES)):
            vals = {t: self.peak_rss(ds, t, phases) for t in self.tools}
            peer, pv = self.best_peer(vals)
            lines.append(f"| {label} | " + " | ".join(self.partial(ds, t, self.text(ds, t, vals[t], fmt_mib))
                                                  for t in self.tools)
                         + f" | {fmt_ratio(ratio(vals.get('tresor'), pv))} | {peer or '—'} |")
        lines += ["", "_Peak RSS from GNU time (`%M`); <1 means tresor uses less._", ""]
        return "\n".join(lines)

    def repo_table(self, ds: str) -> str:
        lines = ["### Repository size (MiB, `du -sb`)", "",
                 *self.table_head("", ["tresor / smallest peer", "smallest peer"])]
        for phase, label in (("repo_size", "after the three backups"), ("repo_size_pruned", "after forget + prune")):
            vals = {t: self.median(ds, t, phase, "bytes") for t in self.tools}
            peer, pv = self.best_peer(vals)
            lines.append(f"| {label} | " + " | ".join(self.text(ds, t, vals[t], fmt_mib) for t in self.tools)
                         + f" | {fmt_ratio(ratio(vals.get('tresor'), pv))} | {peer or '—'} |")
        return "\n".join(lines + [""])

    def baseline_table(self, ds: str) -> str:
        b = {ph: self.median(ds, "baseline", ph) for ph, _ in BASELINES}
        lines = ["### Baselines", "", "| baseline | seconds |", "|---|---:|"]
        lines += [f"| {label} | {self.cell(ds, 'baseline', ph, b[ph], fmt_s)} |" for ph, label in BASELINES]
        if "tresor" in self.tools:
            t = {ph: self.median(ds, "tresor", ph) for ph in ("restore_tmpfs", "restore_disk", "backup_initial")}
            lines += ["", "| tresor ratio (lower is better) | value |", "|---|---:|",
                      f"| restore → tmpfs / cp -a → tmpfs | {fmt_ratio(ratio(t['restore_tmpfs'], b['copy_tmpfs']))} |",
                      f"| restore → disk / cp -a → disk | {fmt_ratio(ratio(t['restore_disk'], b['copy_disk']))} |",
                      f"| initial backup / read+hash floor | {fmt_ratio(ratio(t['backup_initial'], b['hash_floor']))} |"]
        return "\n".join(lines) + "\n"

    def prune_memory_section(self) -> str:
        counts = sorted({int(r["dataset"][5:]) for r in self.records if r["dataset"].startswith("blobs")})
        if len(counts) < 2:
            return ""
        lo, hi = counts[0], counts[-1]
        lines = ["## Prune memory per blob", "",
                 f"Repositories of {lo:,} and {hi:,} files of 256 random bytes (one data blob each), backed up "
                 "once whole and once with half the directories gone; then each tool's forget-all-but-latest + "
                 "prune, which removes half the blobs. The slope of peak RSS between the two sizes is what each "
                 "blob costs.", "",
                 f"| tool | peak MiB at {lo:,} | peak MiB at {hi:,} | bytes per blob |", "|---|---:|---:|---:|"]
        for t in self.tools:
            a, b = self.peak_rss(f"blobs{lo}", t, ["prune"]), self.peak_rss(f"blobs{hi}", t, ["prune"])
            slope = (b - a) / (hi - lo) if a is not None and b is not None else None
            lines.append(f"| {t} | {fmt_mib(a) if a else '—'} | {fmt_mib(b) if b else '—'} | "
                         + (f"{slope:.0f}" if slope is not None else "—") + " |")
        return "\n".join(lines) + "\n"

    # -- PostgreSQL ----------------------------------------------------------

    def pg_section(self) -> str:
        pg = self.meta.get("pg")
        if not pg or not any(r["dataset"] == "pg" for r in self.records):
            return ""
        v = pg["versions"]
        rows = pg["rows"]
        lines = [
            f"## PostgreSQL (pgbench scale {pg['scale']})", "",
            f"Measured by `python3 bench/bench.py pg` on {pg['date']} (same machine as above), "
            f"{pg['runs']} runs per measurement, median reported. "
            + ", ".join(f"{name} `{ver}`" for name, ver in v.items()) + ".", "",
            f"A fresh `initdb` cluster (default settings), database `bench` loaded with "
            f"`pgbench -i -s {pg['scale']}` ({rows:,} rows in `pgbench_accounts`; database "
            f"{fmt_mib(pg['db_bytes'])} MiB, data directory {fmt_mib(pg['cluster_bytes'])} MiB; "
            f"loading took {pg['load_seconds']:.0f} s). Client and server on one machine over 127.0.0.1, "
            "warm page cache, repositories and output on the same ext4 disk. An untimed `CHECKPOINT` and "
            "`sync` come before every backup. Every restore is checked: the restored cluster or database "
            f"must answer `SELECT count(*) FROM pgbench_accounts` with {rows:,}.", "",
            "**tresor / direct** is tresor's value divided by the tool run directly: below 1× tresor "
            "is faster, smaller or uses less memory. Peak RSS is GNU time's `%M` for the whole command: "
            "the largest single process in it (tresor's own children, `pg_basebackup`, `pg_dump`, "
            "`pg_restore`, `tar`, count too).", "",
            self.pg_physical_table(), self.pg_logical_table(), self.pg_commands(),
        ]
        return "\n".join(lines)

    def pg_row(self, label, tools, phase, field="seconds", fmt=fmt_s, rss=False, direct=None) -> str:
        """One table row: a value per tool and tresor / direct (direct = tools[1])."""
        vals = {}
        for t in tools:
            if phase is None:
                vals[t] = None
            elif rss:
                vals[t] = self.peak_rss("pg", t, phase)
            else:
                vals[t] = self.median("pg", t, phase, field)
        cells = []
        for t in tools:
            if phase is None or (vals[t] is None and not self.recs("pg", t, phase[0] if rss else phase)):
                cells.append("—")
            else:
                cells.append(self.cell("pg", t, phase[0] if rss else phase, vals[t], fmt))
        d = direct or tools[1]
        return f"| {label} | " + " | ".join(cells) + f" | {fmt_ratio(ratio(vals[tools[0]], vals.get(d)))} |"

    def pg_physical_table(self) -> str:
        tools = ["tresor", "pg_basebackup"]
        lines = ["### Physical: base backup of the cluster and restore", "",
                 "| | tresor `pg backup` / `pg restore` | `pg_basebackup -Ft -X fetch` / `tar -x` | tresor / direct |",
                 "|---|---:|---:|---:|",
                 self.pg_row("backup (s)", tools, "phys_backup"),
                 f"| no-change backup (s) | {self.cell('pg', 'tresor', 'phys_backup_nochange', self.median('pg', 'tresor', 'phys_backup_nochange'), fmt_s)} | — | — |",
                 self.pg_row("restore: data directory written (s)", tools, "phys_restore"),
                 self.pg_row("restore: server start until `pg_is_in_recovery()` = f (s)", tools, "phys_start"),
                 self.pg_row("restore: total (s)", tools, "phys_start", "total_seconds"),
                 self.pg_row("peak RSS, backup (MiB)", tools, ["phys_backup", "phys_backup_nochange"], rss=True, fmt=fmt_mib),
                 self.pg_row("peak RSS, restore (MiB)", tools, ["phys_restore"], rss=True, fmt=fmt_mib),
                 self.pg_row("stored after one backup (MiB)", tools, "phys_backup", "bytes", fmt_mib),
                 f"| added by the no-change backup (MiB) | "
                 f"{self.cell('pg', 'tresor', 'phys_backup_nochange', self.median('pg', 'tresor', 'phys_backup_nochange', 'added_bytes'), fmt_mib)} | — | — |",
                 "",
                 "_Stored: tresor's repository (`du -sb`, compressed, deduplicated, encrypted) against "
                 "`pg_basebackup`'s output directory (uncompressed tar plus `backup_manifest`). "
                 "tresor restores with `--immediate --no-archive`: PostgreSQL runs archive recovery to the "
                 "end of the base backup (its `restore_command` is `tresor pg wal-fetch`) and promotes; the "
                 "plain tar copy starts with crash recovery from the WAL inside it. In archive recovery PostgreSQL "
                 "asks `restore_command` (a new tresor process each time) for every WAL segment and timeline "
                 "history file before it looks in `pg_wal`, also for the segments the base backup holds "
                 "(six calls here, none of them finding a file). pgbench's tables are mostly blank padding, so "
                 "they compress far better than real data: the stored sizes flatter every compressing tool._", ""]
        return "\n".join(lines)

    def pg_logical_table(self) -> str:
        tools = ["tresor", "pg_dump", "restic"]
        if not self.recs("pg", "restic", "logical_backup"):
            tools = tools[:2]
        head = "| | tresor `backup postgres://…/bench` / `restore --to postgres://…` | `pg_dump -Fc` / `pg_restore` |"
        sep = "|---|---:|---:|"
        if "restic" in tools:
            head += " restic `backup --stdin` / `dump \\| pg_restore` |"
            sep += "---:|"
        head += " tresor / direct |"
        sep += "---:|"

        def nochange(field, fmt):
            cells = [self.cell("pg", t, "logical_backup_nochange",
                               self.median("pg", t, "logical_backup_nochange", field), fmt)
                     if t != "pg_dump" else "—" for t in tools]
            return cells

        lines = ["### Logical: one database, `pg_dump` format", "", head, sep,
                 self.pg_row("backup (s)", tools, "logical_backup"),
                 "| no-change backup (s) | " + " | ".join(nochange("seconds", fmt_s)) + " | — |",
                 self.pg_row("restore into a new database (s)", tools, "logical_restore"),
                 self.pg_row("peak RSS, backup (MiB)", tools, ["logical_backup", "logical_backup_nochange"], rss=True, fmt=fmt_mib),
                 self.pg_row("peak RSS, restore (MiB)", tools, ["logical_restore"], rss=True, fmt=fmt_mib),
                 self.pg_row("stored after one backup (MiB)", tools, "logical_backup", "bytes", fmt_mib),
                 "| added by the no-change backup (MiB) | " + " | ".join(nochange("added_bytes", fmt_mib)) + " | — |",
                 "",
                 "_All three run `pg_dump -Fc` (zlib-compressed custom format) and restore with "
                 "`pg_restore --no-owner --exit-on-error` (the flags tresor passes), one job. Restore times include "
                 "`CREATE DATABASE` (`createdb` for the direct tools). Stored: the dump file, or the repository "
                 "(`du -sb`)._", ""]
        return "\n".join(lines)

    def pg_commands(self) -> str:
        return "\n".join([
            "Commands (`R` a fresh repository, `PW` its password file, `P` the cluster's port; "
            "`TRESOR_PG_BIN=/usr/lib/postgresql/15/bin`):", "",
            "```sh",
            "tresor --repo R --password-file PW init",
            "tresor --repo R --password-file PW pg backup postgres://postgres@127.0.0.1:P      # twice",
            "tresor --repo R --password-file PW pg restore --immediate --no-archive --target DIR",
            "pg_basebackup -h 127.0.0.1 -p P -U postgres -D OUT -Ft -X fetch -c fast",
            "tar -x -f OUT/base.tar -C DIR",
            "pg_ctl -D DIR -o '-p P2 -c listen_addresses=127.0.0.1 -k SOCK' start   # as postgres; then poll",
            "tresor --repo R --password-file PW backup postgres://postgres@127.0.0.1:P/bench   # twice",
            "tresor --repo R --password-file PW restore latest --to postgres://postgres@127.0.0.1:P/bench_tresor",
            "pg_dump -h 127.0.0.1 -p P -U postgres -Fc -f FILE bench",
            "createdb … bench_direct && pg_restore … --no-owner --exit-on-error -d bench_direct FILE",
            "pg_dump … -Fc bench | restic backup --stdin --stdin-filename bench.dump        # twice",
            "createdb … bench_restic && restic dump latest bench.dump | pg_restore … --no-owner --exit-on-error -d bench_restic",
            "```", ""])

    # -- targets -------------------------------------------------------------

    def speedup(self, ds, phase):
        vals = {t: self.median(ds, t, phase) for t in self.tools}
        peer, pv = self.best_peer(vals)
        return ratio(pv, vals.get("tresor")), peer

    def targets(self):
        """(description, measured value text, pass or None if not measurable)."""
        out = []
        dsets = list(self.meta["datasets"])

        def add_speed(ds, phase, need, what):
            r, peer = self.speedup(ds, phase)
            out.append((f"`{ds}`: {what} ≥{need}× faster than fastest peer",
                        f"{fmt_ratio(r)} vs {peer}" if r else "no data", None if r is None else r >= need))

        def add_limit(desc, value, limit):
            out.append((desc, fmt_ratio(value) if value is not None else "no data",
                        None if value is None else value <= limit))

        if "linux" in dsets:
            add_speed("linux", "backup_initial", 2, "initial backup")
            add_speed("linux", "backup_nochange", 3, "no-change backup")
        if "large" in dsets:
            add_speed("large", "backup_initial", 2, "large-file initial backup")
        for ds in dsets:
            add_speed(ds, "restore_tmpfs", 1.5, "restore to tmpfs")
            tr = lambda ph: self.median(ds, "tresor", ph)
            base = lambda ph: self.median(ds, "baseline", ph)
            add_limit(f"`{ds}`: restore to tmpfs ≤1.5× `cp -a` (tmpfs)", ratio(tr("restore_tmpfs"), base("copy_tmpfs")), 1.5)
            add_limit(f"`{ds}`: restore to disk ≤1.1× `cp -a` (disk)", ratio(tr("restore_disk"), base("copy_disk")), 1.1)
            for label, phases in (("backup", BACKUP_PHASES), ("restore", RESTORE_PHASES)):
                vals = {t: self.peak_rss(ds, t, phases) for t in self.tools}
                add_limit(f"`{ds}`: peak memory in {label} ≤ ½ of smallest peer",
                          ratio(vals.get("tresor"), self.best_peer(vals)[1]), 0.5)
            sizes = {t: self.median(ds, t, "repo_size", "bytes") for t in self.tools}
            add_limit(f"`{ds}`: repository ≤ smallest peer's", ratio(sizes.get("tresor"), self.best_peer(sizes)[1]), 1.0)
        return out

    def targets_section(self) -> str:
        lines = ["## Targets", "", "| target | measured | status |", "|---|---:|:---:|"]
        for desc, value, ok in self.targets():
            status = "✅" if ok else ("❌" if ok is False else "❌ (not measured)")
            lines.append(f"| {desc} | {value} | {status} |")
        return "\n".join(lines) + "\n"

    def problems_section(self) -> str:
        lines = []
        for r in self.records:
            where = f"`{r['dataset']}` / {r['tool']} / {r['phase']} / run {r['run']}"
            if not r.get("ok"):
                lines.append(f"- ❌ {where}: {r.get('error')}")
        if not lines:
            return "## Failures\n\nNone: every step of every tool succeeded and every restore was verified.\n"
        return ("## Failures and warnings\n\nAfter a failed init or backup, the remaining steps of that "
                "tool's run are skipped (they need the repository). A restore whose files do not match "
                "the source (count, bytes, the changed bytes) counts as failed. ⚠ in a table marks "
                "a value from only some runs or phases.\n\n"
                + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
