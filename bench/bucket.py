#!/usr/bin/env python3
"""Bucket backup: tresor's bucket source against `rclone sync` to a local
directory, on one bucket of the in-process S3 server (testkit's s3s-fs,
run as `cargo run --release -p tresor-testkit --example s3_server`),
measured with /usr/bin/time: wall time and peak RSS, for a first run and a
second run of the unchanged bucket.

    bench/bucket.py [--objects N] [--tresor PATH] [--server PATH] [--out FILE]

Prints a Markdown table (and writes it to --out). Both tools read the same
objects from the same server, which does much of the work: compare ratios.
"""

import argparse
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measured(cmd: list, env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS in MiB of one command, which must succeed."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
    seconds, kib = out.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) // 1024


def emit(lines: list, out) -> None:
    """Print the table's lines, and write them to the file `out` if given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)


def make_objects(root: Path, n: int) -> int:
    """n files in nested prefixes, 1 KiB to 1 MiB, plus a 64 MiB one: total bytes."""
    rng = random.Random(16)
    total = 0
    for i in range(n):
        p = root / f"p{i % 20}" / f"q{i % 7}" / f"obj-{i:06}"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.choice([1024, 8192, 65536, 1 << 20]))
        p.write_bytes(data)
        total += len(data)
    big = rng.randbytes(64 << 20)
    (root / "big.bin").write_bytes(big)
    return total + len(big)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=5000)
    ap.add_argument("--tresor", default=str(ROOT / "target/release/tresor"))
    ap.add_argument("--server", default=str(ROOT / "target/release/examples/s3_server"))
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tresor-bench-bucket-"))
    server = subprocess.Popen([args.server], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        s3 = json.loads(server.stdout.readline())
        total = make_objects(Path(s3["root"]) / s3["bucket"], args.objects)
        # A CA bundle for real AWS makes rclone's S3 client refuse its transport.
        base = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env = dict(base, RCLONE_CONFIG="/dev/null", RCLONE_S3_PROVIDER="Other", RCLONE_S3_ENDPOINT=s3["endpoint"],
                   RCLONE_S3_ACCESS_KEY_ID=s3["access_key"], RCLONE_S3_SECRET_ACCESS_KEY=s3["secret_key"],
                   RCLONE_S3_REGION=s3["region"], RCLONE_S3_FORCE_PATH_STYLE="true")
        remote = f":s3:{s3['bucket']}"
        (work / "pw").write_text("bench\n")
        tenv = dict(env, TRESOR_REPOSITORY=str(work / "repo"), TRESOR_PASSWORD_FILE=str(work / "pw"),
                    TRESOR_CACHE_DIR=str(work / "cache"), TRESOR_SOURCE_AWS_ACCESS_KEY_ID=s3["access_key"],
                    TRESOR_SOURCE_AWS_SECRET_ACCESS_KEY=s3["secret_key"])
        subprocess.run([args.tresor, "init"], env=tenv, check=True, capture_output=True)
        url = f"bucket+s3://{s3['bucket']}?endpoint={s3['endpoint']}&region={s3['region']}"
        rows = []
        for run in ("first", "unchanged"):
            t = measured([args.tresor, "backup", url], tenv)
            # rclone's default is 4 transfers; tresor downloads 8 at once: both 8.
            r = measured(["rclone", "sync", "--transfers", "8", "--checkers", "8", remote, str(work / "copy")], env)
            rows.append((run, t, r))
    finally:
        server.stdin.close()
        server.wait()
        subprocess.run(["rm", "-rf", str(work)])
    lines = [
        f"Bucket backup: {args.objects + 1} objects, {total / 2**20:.0f} MiB, served by the in-process S3 server "
        "(s3s-fs) on loopback (tresor `backup bucket+s3://…` into a local repository; `rclone sync` into a local directory, 8 transfers):",
        "",
        "| run | tresor time | rclone time | time ratio | tresor peak RSS | rclone peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run, (ts, tm), (rs, rm) in rows:
        lines.append(f"| {run} | {ts:.1f} s | {rs:.1f} s | {ts / rs:.2f} | {tm} MiB | {rm} MiB |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
