#!/bin/sh
# Run inside the image's root file system once its packages are installed,
# by the Dockerfile and by scripts/build-image.sh alike: the user the
# Deployment runs as (10001:10001) and its directories, for runs without the
# Deployment's volumes too (docker run, podman run).
set -eu
groupadd --gid 10001 tresor
useradd --uid 10001 --gid 10001 --home-dir /var/lib/tresor --no-create-home --shell /usr/sbin/nologin tresor
install -d -o 10001 -g 10001 -m 0750 /var/lib/tresor
# The cache and the drills' scratch are often tmpfs mounts (emptyDirs,
# docker run --tmpfs), which runc makes root's with the mode of the directory
# beneath: open to all, as /tmp, so that the user can write them.
install -d -o 10001 -g 10001 -m 1777 /var/cache/tresor /var/tmp/tresor
