#!/usr/bin/env bash
# Fails when proto/ changed in a way that breaks clients generated from the baseline:
# - ORDERMESH_BREAKING_AGAINST, when set (any git revision);
# - else the merge base of HEAD with main (origin/main, else main) — on main itself, the commit
#   before HEAD — and also the latest release tag (v*), when there is one.
# A shallow clone is deepened from its origin first. When no baseline can be found the check
# fails and says what to do: a check that skips itself would pass on every broken contract.
# Usage: scripts/buf-breaking.sh [REPOSITORY]  (default: the one this script is in).
# BUF overrides the buf binary (default: tools/node_modules/.bin/buf, from scripts/infra.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
buf="${BUF:-$here/tools/node_modules/.bin/buf}"
cd "${1:-$here}"
fail() { echo "buf-breaking: $*" >&2; exit 1; }
[ -x "$buf" ] || fail "no buf at $buf (scripts/infra.sh installs it, or set BUF)"

baselines=()
if [ -n "${ORDERMESH_BREAKING_AGAINST:-}" ]; then
  baselines+=("$(git rev-parse --verify --quiet "${ORDERMESH_BREAKING_AGAINST}^{commit}")") ||
    fail "ORDERMESH_BREAKING_AGAINST=$ORDERMESH_BREAKING_AGAINST is not a commit here"
else
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    git fetch --quiet --unshallow --tags 2>/dev/null || true
  fi
  main=""
  for ref in origin/main main; do
    if git rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then main=$ref; break; fi
  done
  [ -n "$main" ] || fail "no main branch to compare with; fetch it or set ORDERMESH_BREAKING_AGAINST"
  base=$(git merge-base HEAD "$main") ||
    fail "HEAD and $main share no history here (a shallow clone?); run git fetch --unshallow or set ORDERMESH_BREAKING_AGAINST"
  if [ "$base" = "$(git rev-parse HEAD)" ]; then
    base=$(git rev-parse --verify --quiet 'HEAD~1^{commit}') ||
      fail "on $main with no commit before HEAD (a shallow clone whose origin cannot be reached?); run git fetch --unshallow or set ORDERMESH_BREAKING_AGAINST"
  fi
  baselines+=("$base")
  if release=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
    baselines+=("$release")
  fi
fi

for baseline in "${baselines[@]}"; do
  echo "buf breaking: proto/ against $baseline"
  "$buf" breaking proto --against ".git#ref=$baseline,subdir=proto"
done
