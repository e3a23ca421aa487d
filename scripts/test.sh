#!/usr/bin/env bash
# Install what the tests need (Debian packages, as root, only where missing),
# then run the whole test suite. CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# setpriv (util-linux) lets a root test run tresor as `nobody`, so that
# unreadable files are really unreadable.
need=()
command -v setpriv >/dev/null || need+=(util-linux)
command -v cc >/dev/null || need+=(build-essential)
# Real servers for the data-source tests.
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
# Prometheus and promtool for the alert rules and the scrape test.
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
# A real Alertmanager: what it holds active after tresor's webhooks.
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
# Headless Chromium for the status page test.
command -v chromium >/dev/null || need+=(chromium)
command -v tar >/dev/null || need+=(tar)
command -v /usr/bin/time >/dev/null || need+=(time)
# scripts/soak.sh (its short run is a test) reads tresor's JSON with jq.
command -v jq >/dev/null || need+=(jq)
command -v runuser >/dev/null || need+=(util-linux)
# The SFTP and WebDAV backends' real servers: OpenSSH's sshd, rclone serve webdav.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v rclone >/dev/null || need+=(rclone)
# Real bash completion for the completion script's test.
[ -f /usr/share/bash-completion/bash_completion ] || need+=(bash-completion)
# The image test: mmdebstrap builds the image's root file system (cached in
# /var/cache/tresor-image), umoci unpacks the image, runc runs it.
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v objcopy >/dev/null || need+=(binutils)
command -v umoci >/dev/null || need+=(umoci)
command -v runc >/dev/null || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# The Azure Blob and GCS backends' real servers: Microsoft's Azurite (npm)
# and gcp-storage-emulator (PyPI), pinned.
if ! command -v azurite-blob >/dev/null || ! command -v gcp-storage-emulator >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: azurite-blob or gcp-storage-emulator (run as root to install them)" >&2
    exit 1
  fi
  command -v azurite-blob >/dev/null || npm install -g --no-fund --no-audit azurite@3.37.0
  command -v gcp-storage-emulator >/dev/null || pip install --quiet gcp-storage-emulator==2026.7.19
  # pyenv's shims learn of a new script only on a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi

# kubectl proves the fake API server against the real client and renders
# deploy/kubernetes; 1.24 or newer (scripts/install-kubectl.sh says why).
if [ "$(id -u)" -eq 0 ]; then
  scripts/install-kubectl.sh
  # Where it installs kubectl, even under a minimal PATH.
  case ":$PATH:" in *:/usr/local/bin:*) ;; *) export PATH="/usr/local/bin:$PATH" ;; esac
else
  command -v kubectl >/dev/null || { echo "missing: kubectl (run as root to install it)" >&2; exit 1; }
fi

# Nothing but Rust and a C compiler builds tresor: a build script that
# still wanted protoc would fail here, as on a fresh machine.
export PROTOC=/nonexistent
# Every request tresor makes to the fake API server, as the shipped service
# account, is logged; after the whole suite, the least-privilege test checks
# the shipped roles against that log: nothing missing, nothing unused.
audit=$(mktemp /tmp/tresor-kube-audit.XXXXXX)
trap 'rm -f "$audit"' EXIT
TRESOR_KUBE_AUDIT_LOG="$audit" cargo test --workspace --locked "$@"
if [ $# -eq 0 ]; then
  TRESOR_KUBE_AUDIT_CHECK="$audit" cargo test --locked -p tresor-cli --test cli -- --exact k8s::the_shipped_roles_allow_what_tresor_does_and_no_more
fi
