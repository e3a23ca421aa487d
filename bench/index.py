#!/usr/bin/env python3
"""Memory per blob: tresor on synthetic repositories of growing size.

Usage:
    index.py [--sizes 1000000,10000000] [--blobs-per-pack N] [--bin PATH] [--work DIR] [--out FILE]

For each size N: `tresor synth --blobs N` fills a fresh repository with N
16-byte blobs in valid packs and index files and one snapshot reaching them
all; then a small backup (200 files, 12.5 MiB) goes into it, and check
(without --read-data), restore and copy of that small snapshot, and
forget+prune of it are measured: wall time and peak RSS (GNU time).
Bytes per blob is the slope of peak RSS between consecutive sizes, so the
constant part (runtime, buffers) drops out. Repositories are made with an
8 MiB Argon2, so that the unlock does not set the peak of small commands.

Standard library only; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import run_measured  # noqa: E402

PHASES = ["synth", "backup", "check", "restore", "copy", "forget_prune"]


def tresor(bin_: str, env: dict, *args: str) -> str:
    return subprocess.run([bin_, *args], env=env, check=True, capture_output=True, text=True).stdout


def small_tree(root: Path) -> None:
    """200 files of 64 KiB of distinct pseudo-random bytes."""
    if root.exists():
        return
    root.mkdir(parents=True)
    for i in range(200):
        (root / f"f{i:03}").write_bytes(os.urandom(64 * 1024))


def measure(bin_: str, work: Path, n: int, per_pack: int) -> dict:
    repo, copy, restore, cache = (work / f"{k}-{n}" for k in ("repo", "copy", "restore", "cache"))
    for p in (repo, copy, restore, cache):
        shutil.rmtree(p, ignore_errors=True)
    pw = work / "password"
    pw.write_text("bench-index\n")
    # A small Argon2 at init: its 64 MiB would otherwise be every small
    # command's peak and hide the index below it.
    env = dict(os.environ, TRESOR_REPOSITORY=str(repo), TRESOR_PASSWORD_FILE=str(pw), TRESOR_CACHE_DIR=str(cache),
               TRESOR_KDF_MEMORY="8M")
    tresor(bin_, env, "init")
    logs = work / "logs" / str(n)
    out: dict = {"blobs": n}

    def step(name: str, *args: str, e: dict | None = None) -> None:
        r = run_measured([bin_, *args], logs / f"{name}.log", env=e or env, timeout=6 * 3600)
        if not r["ok"]:
            raise SystemExit(f"{name} at {n} blobs failed: {r['error']} (log {r['log']})")
        out[name] = {"seconds": round(r["seconds"], 2), "rss_mib": round(r["rss_kib"] / 1024, 1)}
        print(f"{n:>11,} {name:<13} {r['seconds']:9.2f} s {r['rss_kib'] / 1024:9.1f} MiB", flush=True)

    step("synth", "synth", "--blobs", str(n), "--blobs-per-pack", str(per_pack))
    small_tree(work / "small")
    step("backup", "backup", str(work / "small"))
    snaps = json.loads(tresor(bin_, env, "--json", "snapshots"))
    small = next(s["id"] for s in snaps if "synthetic" not in (s.get("tags") or []))
    step("check", "check")
    step("restore", "restore", small, "--target", str(restore))
    copy_env = dict(env, TRESOR_REPOSITORY=str(copy))
    tresor(bin_, copy_env, "init")
    step("copy", "copy", small, "--to", str(copy), "--to-password-file", str(pw))
    step("forget_prune", "forget", small, "--prune")
    out["disk_gib"] = round(sum(f.stat().st_size for f in repo.rglob("*") if f.is_file()) / 2**30, 2)
    for p in (repo, copy, restore, cache):
        shutil.rmtree(p, ignore_errors=True)
    return out


def table(rows: list[dict]) -> str:
    head = "| command | " + " | ".join(f"{r['blobs']:,} blobs: s / peak MiB" for r in rows)
    pairs = list(zip(rows, rows[1:]))
    head += "".join(f" | B/blob {a['blobs'] // 10**6}M→{b['blobs'] // 10**6}M" for a, b in pairs) + " |"
    lines = [head, "|" + "---|" * (1 + len(rows) + len(pairs))]
    for ph in PHASES:
        cells = [f"{r[ph]['seconds']:.1f} / {r[ph]['rss_mib']:.0f}" for r in rows]
        slopes = [f"{(b[ph]['rss_mib'] - a[ph]['rss_mib']) * 2**20 / (b['blobs'] - a['blobs']):.1f}" for a, b in pairs]
        lines.append(f"| {ph.replace('_', '+')} | " + " | ".join(cells + slopes) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--blobs-per-pack", type=int, default=1000, help="data blobs to a pack (default 16 MiB packs of 1 MiB chunks: about 16)")
    ap.add_argument("--bin", default=str(Path(__file__).resolve().parent.parent / "target/release/tresor"))
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "work" / "index"))
    ap.add_argument("--out", default=None, help="results JSON (default WORK/results.json)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure(a.bin, work, int(s), a.blobs_per_pack) for s in a.sizes.split(",")]
    Path(a.out or work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
