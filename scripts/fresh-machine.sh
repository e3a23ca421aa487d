#!/usr/bin/env bash
# Prove the README's two commands on a fresh Debian 12: a minbase root file
# system (debootstrap) with build-essential and rustup's toolchain only, the
# repository cloned into root's home directory (closed to other users, as
# on a real machine). Not part of CI: it takes a full release build and a
# full test run, and about 35 GB of disk (a release and a debug build in the
# root). Needs root, debootstrap and the network to Debian and
# crates.io. Usage: scripts/fresh-machine.sh [ROOTFS_DIR]
# Writes the log to ROOTFS_DIR.log and prints the summary lines. With
# --build-only it stops after command 1 (the daemon serving its page).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build_only=no
if [ "${1:-}" = --build-only ]; then build_only=yes; shift; fi
root=${1:-/var/tmp/tresor-fresh}
log=$root.log
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" -eq 0 ] || { echo "fresh-machine.sh: run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] || { echo "fresh-machine.sh: no rustup toolchain under $rustup_home" >&2; exit 1; }

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
# mount_in DIR ARGS…: mount (ARGS, without the target) on DIR inside the root.
mount_in() {
  local target=$root$1
  shift
  mkdir -p "$target"
  mount "$@" "$target" && mounted+=("$target")
}

if [ ! -x "$root/usr/bin/gcc" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$log" 2>&1
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" apt-get update -qq >>"$log" 2>&1
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq build-essential ca-certificates >>"$log" 2>&1
fi
# The machine's own CAs (a proxy's, where registries are reached through
# one) go along: they belong to the network, not to the project.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >>"$log" 2>&1
fi
mount_in /proc -t proc proc
mount_in /sys --rbind /sys
mount_in /dev --rbind /dev
mkdir -p "$root/root"
chmod 700 "$root/root"
# rustup's toolchain as a new user has it: rustup and its proxies, nothing
# else from this machine (no registry cache, no installed tools).
rm -rf "$root/root/.rustup" "$root/root/.cargo"
mkdir -p "$root/root/.cargo/bin"
cp -a "$rustup_home" "$root/root/.rustup"
cp -a "$cargo_home/bin/rustup" "$root/root/.cargo/bin/"
# rustup's proxies (cargo, rustc, rustdoc, …) are links to rustup itself.
for tool in "$cargo_home"/bin/*; do
  [ -L "$tool" ] && [ "$(readlink "$tool")" = rustup ] && cp -a "$tool" "$root/root/.cargo/bin/"
done
# The first run clones; a later one moves the same clone to the new HEAD, so
# its build is incremental (the root file system and toolchain stay fresh).
if [ -d "$root/root/tresor/.git" ]; then
  git -C "$root/root/tresor" fetch -q "$here" HEAD
  git -C "$root/root/tresor" reset -q --hard FETCH_HEAD
else
  git clone -q "$here" "$root/root/tresor"
fi

run() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb bash -c "$1"; }

echo "== command 1: cargo run --release -p tresor-cli -- daemon" | tee -a "$log"
run 'cd /root/tresor && cargo build --release -p tresor-cli' >>"$log" 2>&1
run 'cd /root/tresor && (cargo run --release -p tresor-cli -- daemon >/root/daemon.log 2>&1 & echo $! >/root/daemon.pid)'
served=no
for _ in $(seq 1 120); do
  if run 'exec 3<>/dev/tcp/127.0.0.1/9750 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && grep -q "tresor status" <&3' 2>/dev/null; then
    served=yes
    break
  fi
  sleep 1
done
run 'kill -INT $(cat /root/daemon.pid); sleep 2; cat /root/daemon.log' >>"$log" 2>&1 || true
echo "status page served: $served" | tee -a "$log"
if [ "$build_only" = yes ]; then
  [ "$served" = yes ]
  exit
fi

echo "== command 2: scripts/test.sh" | tee -a "$log"
status=0
run 'cd /root/tresor && scripts/test.sh' >>"$log" 2>&1 || status=$?
grep -E "^test result:|passed|failed" "$log" | grep -E "^test result:" | tee -a "$log.summary" || true
echo "scripts/test.sh exit status: $status" | tee -a "$log"
[ "$served" = yes ] && [ "$status" -eq 0 ]
