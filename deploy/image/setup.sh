#!/bin/sh
# Run inside the image's root file system once its packages are installed,
# by the Dockerfile and by scripts/build-image.sh alike: the user the
# Deployment runs as (10001:10001) and its directories, for runs without the
# Deployment's volumes too (docker run, podman run).
set -eu
groupadd --gid 10001 tresor
useradd --uid 10001 --gid 10001 --home-dir /var/lib/tresor --no-create-home --shell /usr/sbin/nologin tresor
# The state (SQLite, rebuilt from the repositories when lost), the cache and
# the drills' scratch are emptyDirs in deploy/ (docker run --tmpfs alike),
# which runc makes root's with the mode of the directory beneath: open to
# all, as /tmp, so that the user can write them.
install -d -o 10001 -g 10001 -m 1777 /var/lib/tresor /var/cache/tresor /var/tmp/tresor
