#!/usr/bin/env bash
# Bazel workspace status for bazel/envoy (`build --workspace_status_command` in .bazelrc; Bazel
# runs it in this directory). Envoy stamps BUILD_SCM_REVISION and BUILD_SCM_STATUS into
# `envoy --version` ("REVISION/1.40.0/STATUS/RELEASE/BoringSSL") and parses the revision as hex
# for its server.version stat. The revision is the Envoy commit pinned in MODULE.bazel; the status
# names this envoy-smc checkout ("envoy-smc-<commit>", "-modified" with local changes).
set -euo pipefail

envoy_commit="$(sed -n 's/^ENVOY_COMMIT = "\([0-9a-f]\{40\}\)"$/\1/p' MODULE.bazel)"
[ -n "$envoy_commit" ] || { echo "workspace_status.sh: no ENVOY_COMMIT in MODULE.bazel" >&2; exit 1; }
smc="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if ! git diff-index --quiet HEAD -- 2>/dev/null; then
  smc="$smc-modified"
fi
echo "BUILD_SCM_REVISION $envoy_commit"
echo "STABLE_BUILD_SCM_REVISION $envoy_commit"
echo "BUILD_SCM_STATUS envoy-smc-$smc"
echo "STABLE_BUILD_SCM_STATUS envoy-smc-$smc"
