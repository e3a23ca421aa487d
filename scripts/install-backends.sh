#!/bin/sh
# Installs the servers the storage backend tests run against, where missing:
# OpenSSH's sshd and the ssh client (SFTP), rclone (WebDAV), Azurite (Azure
# Blob, from npm) and gcp-storage-emulator (GCS, from PyPI). Idempotent.
# The harnesses find them at these places; TRESOR_SSHD, TRESOR_RCLONE,
# TRESOR_AZURITE and TRESOR_GCS_EMULATOR override.
set -eu

PREFIX=${TRESOR_TEST_TOOLS:-/opt/tresor-test}

missing=""
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
command -v rclone >/dev/null 2>&1 || missing="$missing rclone"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

if [ ! -x "$PREFIX/azurite/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$PREFIX/azurite"
    npm install --no-audit --no-fund --prefix "$PREFIX/azurite" azurite@3
fi

if [ ! -x "$PREFIX/gcs/bin/gcp-storage-emulator" ]; then
    python3 -m venv "$PREFIX/gcs"
    "$PREFIX/gcs/bin/pip" install -q gcp-storage-emulator
fi
