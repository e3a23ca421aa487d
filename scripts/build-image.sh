#!/usr/bin/env bash
# Build the tresor image here, with no registry and no Docker engine: a
# Debian 12 root file system with deploy/image/packages.txt (Debian's
# PostgreSQL 15), the user of deploy/image/setup.sh and the tresor binary,
# as an OCI image archive that `docker load -i` and `podman load -i` accept.
#
#   scripts/build-image.sh [--binary PATH] [--tag NAME] --out FILE.tar
#
# The root file system is one layer, cached under $TRESOR_IMAGE_CACHE
# (/var/cache/tresor-image) and keyed by what it is made of; the binary is
# a second layer, so a rebuild with a new binary only packs the binary.
# deploy/image/Dockerfile builds the same image for a registry.
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/.." && pwd)
image_dir=$root/deploy/image
die() { echo "build-image: $*" >&2; exit 1; }
usage() { echo "usage: scripts/build-image.sh [--binary PATH] [--tag NAME] --out FILE.tar" >&2; exit 2; }

# Debian 12's own PostgreSQL; users' builds take several majors from
# PostgreSQL's repository (the Dockerfile).
pg_major=15
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
binary=$root/target/release/tresor
tag=ghcr.io/tresor/tresor:$version
out=
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --binary) binary=$2 ;;
    --tag) tag=$2 ;;
    --out) out=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[ -n "$out" ] || usage
[ -x "$binary" ] || die "no tresor binary at $binary (cargo build --release -p tresor-cli, or pass --binary)"
[ "$(id -u)" -eq 0 ] || die "run as root: the root file system is built with chroot and owned by root"
for tool in mmdebstrap:mmdebstrap objcopy:binutils sha256sum:coreutils gzip:gzip tar:tar flock:util-linux; do
  command -v "${tool%%:*}" >/dev/null || die "missing tool: ${tool%%:*} (Debian package ${tool#*:})"
done
sources=/etc/apt/sources.list.d/debian.sources
[ -r "$sources" ] || die "no Debian apt sources at $sources to build the root file system from"

# "sha256:HEX SIZE" of a file.
blob_id() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1) $(stat -c %s "$1")"; }

# Pack directory $1 (entries $3...) as a gzip layer into blob dir $2; print
# "DIGEST SIZE DIFF_ID". Names sorted and owners numeric: the same tree
# gives the same tar.
pack_layer() {
  local dir=$1 blobs=$2 diff_id digest size
  shift 2
  tar --numeric-owner --sort=name --exclude='./dev/*' -C "$dir" -cf "$blobs/layer.tar" "$@"
  diff_id=$(blob_id "$blobs/layer.tar")
  gzip -n -6 "$blobs/layer.tar"
  read -r digest size <<<"$(blob_id "$blobs/layer.tar.gz")"
  mv "$blobs/layer.tar.gz" "$blobs/${digest#sha256:}"
  echo "$digest $size ${diff_id% *}"
}

build_base() {
  local work=$1 log=$1/mmdebstrap.log
  mkdir -p "$work/blobs/sha256"
  echo "build-image: building the Debian 12 root file system (log: $log)" >&2
  # No cluster at install time: drills make their own, and /var/lib/postgresql
  # would only carry an unused one (the Dockerfile does the same).
  if ! mmdebstrap --variant=minbase \
      --include="$("$image_dir/packages.sh" "$pg_major" | paste -sd,)" \
      --setup-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/tresor.conf"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook="chroot \"\$1\" sh < \"$image_dir/setup.sh\"" \
      bookworm "$work/rootfs" "$sources" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "mmdebstrap failed (full log: $log)"
  fi
  pack_layer "$work/rootfs" "$work/blobs/sha256" . >"$work/base.layer"
  rm -rf "$work/rootfs"
}

# The cached base: keyed by everything that goes into it.
cache=${TRESOR_IMAGE_CACHE:-/var/cache/tresor-image}
key=$(cat "$image_dir/packages.txt" "$image_dir/packages.sh" "$image_dir/setup.sh" "$0" "$sources" | sha256sum | cut -c1-16)
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if [ ! -f "$cache/$key/base.layer" ]; then
  # Other keys are stale bases: a changed package list or script.
  find "$cache" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
  started=$SECONDS
  build_base "$cache/$key.part"
  mv "$cache/$key.part" "$cache/$key"
  echo "build-image: root file system built and cached in $((SECONDS - started))s" >&2
fi
read -r base_digest base_size base_diff_id <"$cache/$key/base.layer"

work=$(mktemp -d "$(dirname "$out")/.build-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stage/usr/local/bin" "$work/blobs/sha256"
# Without debug sections: a third of the size, symbol names kept for backtraces.
objcopy --strip-debug "$binary" "$work/stage/usr/local/bin/tresor"
chmod 0755 "$work/stage/usr/local/bin/tresor"
bin_layer=$(pack_layer "$work/stage" "$work/blobs/sha256" --owner=0 --group=0 usr)
read -r bin_digest bin_size bin_diff_id <<<"$bin_layer"
rm -rf "$work/stage"

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
layer_type=application/vnd.oci.image.layer.v1.tar+gzip
cat >"$work/config.json" <<EOF
{"created":"$created","architecture":"amd64","os":"linux","config":{"User":"10001:10001","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","TRESOR_PG_BIN=/usr/lib/postgresql/$pg_major/bin"],"Entrypoint":["tini","--","tresor"],"Cmd":["--help"],"WorkingDir":"/var/lib/tresor"},"rootfs":{"type":"layers","diff_ids":["$base_diff_id","$bin_diff_id"]},"history":[{"created":"$created","created_by":"mmdebstrap bookworm + deploy/image/packages.txt + deploy/image/setup.sh"},{"created":"$created","created_by":"tresor binary"}]}
EOF
read -r config_digest config_size <<<"$(blob_id "$work/config.json")"
mv "$work/config.json" "$work/blobs/sha256/${config_digest#sha256:}"
cat >"$work/manifest" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config_digest","size":$config_size},"layers":[{"mediaType":"$layer_type","digest":"$base_digest","size":$base_size},{"mediaType":"$layer_type","digest":"$bin_digest","size":$bin_size}]}
EOF
read -r manifest_digest manifest_size <<<"$(blob_id "$work/manifest")"
mv "$work/manifest" "$work/blobs/sha256/${manifest_digest#sha256:}"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
cat >"$work/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$manifest_digest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"$tag","io.containerd.image.name":"$tag"}}]}
EOF
# What `docker save` writes beside the OCI layout, for engines that load
# only that.
cat >"$work/manifest.json" <<EOF
[{"Config":"blobs/sha256/${config_digest#sha256:}","RepoTags":["$tag"],"Layers":["blobs/sha256/${base_digest#sha256:}","blobs/sha256/${bin_digest#sha256:}"]}]
EOF
tar --numeric-owner --owner=0 --group=0 -cf "$work/image.tar" \
  -C "$work" oci-layout index.json manifest.json blobs \
  -C "$cache/$key" "blobs/sha256/${base_digest#sha256:}"
mv "$work/image.tar" "$out"
echo "build-image: $out ($tag, $(du -h "$out" | cut -f1))" >&2
