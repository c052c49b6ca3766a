#!/usr/bin/env bash
# The scale run's anchor: Kubernetes' own scheduler benchmark (test/integration/scheduler_perf
# of k8s.io/kubernetes, the version the tool cache's kube-scheduler is built from), one DRA
# workload and one without DRA on the same number of nodes, so our pods/s have a reference
# from the same machine. In-process API server and scheduler, its own etcd (the cache's), no
# client rate limits: the scheduler's pace on this machine.
#
# Builds the two test binaries once (a wrapper module like e2e/tools.sh's kubernetes one,
# `go test -c`, ~10-20 min on 2 cores) into $QAIC_TOOLS_DIR/scheduler-perf-<version>/bin,
# then runs them from their package directories (the configs name templates by relative
# path). Prints each workload's SchedulingThroughput line; logs go to $OUT (default a temp dir).
#
# Usage: bench/scale/scheduler_perf.sh [dra-workload [basic-workload]]
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
TOOLS=${QAIC_TOOLS_DIR:-/var/cache/qaic-k8s/tools}
DRA=${1:-SchedulingWithResourceClaimTemplate/5000pods_500nodes}
BASIC=${2:-SchedulingBasic/500Nodes}
OUT=${OUT:-$(mktemp -d /tmp/qaic-scheduler-perf-XXXXXX)}
export GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local
out="$TOOLS/scheduler-perf-$K8S_VERSION"
m=k8s.io/kubernetes
log() { echo "== scheduler_perf: $*" >&2; }

if [ ! -f "$out/.done" ]; then
  log "building the dra and misc test binaries of $m $K8S_VERSION (once; 10-20 min)"
  w="$TOOLS/.build/scheduler-perf"; rm -rf "$w"; mkdir -p "$w" "$out/bin"
  mod=$(go mod download -json "$m@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  sv="v0.${K8S_VERSION#v1.}"
  { printf 'module wrapper\n\ngo 1.26.0\n\nrequire %s %s\n\nreplace (\n' "$m" "$K8S_VERSION"
    grep -E '^\s+k8s.io/[a-z0-9-]+ => ./staging' "$mod" | awk -v v="$sv" '{print "\t"$1" => "$1" "v}'
    echo ")"; echo "godebug default=go1.26"; } > "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/test/integration/scheduler_perf"\n' "$m" > "$w/tools.go"
  (cd "$w" && { go mod tidy >/dev/null 2>&1 || go mod tidy; }
   for pkg in dra misc; do
     go test -c -mod=mod -trimpath -o "$out/bin/$pkg.test" "$m/test/integration/scheduler_perf/$pkg"
   done)
  touch "$out/.done"
fi

src=$(cd "$TOOLS/.build/scheduler-perf" 2>/dev/null && go list -m -f '{{.Dir}}' "$m" 2>/dev/null \
      || go mod download -json "$m@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# -trimpath leaves the test API server's own package path relative to the module cache
# (k8s.io/kubernetes@v.../cmd/kube-apiserver/app/testing), and it refuses a relative path
# unless Bazel's two variables say where the sources are: they point it at the module cache.
modcache=$(go env GOMODCACHE)
export TEST_SRCDIR=$(dirname "$modcache") TEST_WORKSPACE=$(basename "$modcache")
export PATH="$TOOLS/etcd-$ETCD_VERSION/bin:$PATH" KUBE_CACHE_MUTATION_DETECTOR=false \
  KUBE_INTEGRATION_ETCD_URL="http://127.0.0.1:$port" ARTIFACTS="$OUT"  # nothing listens there: own etcd
for run in "dra $DRA" "misc $BASIC"; do
  set -- $run
  log "$2 ($1.test; log $OUT/$1.log)"
  (cd "$src/test/integration/scheduler_perf/$1" && \
   "$out/bin/$1.test" -test.run='^$' -test.bench="^BenchmarkPerfScheduling\$/^${2%%/*}\$/^${2#*/}\$" \
     -test.benchtime=1x \
     -test.timeout=60m -perf-scheduling-label-filter= -data-items-dir="$OUT" >"$OUT/$1.log" 2>&1) \
    || { rc=$?; if grep -q 'to be higher: got' "$OUT/$1.log"; then
           # upstream's own floor for its CI machines (e.g. 56 pods/s), not a broken run
           log "$2: below upstream's threshold: $(grep -o 'expected .* want [0-9.]*' "$OUT/$1.log")"
         else log "$1.test failed (exit $rc): see $OUT/$1.log"; fi; }
  grep -E "^BenchmarkPerfScheduling" "$OUT/$1.log" || true
done
# The figures to quote: SchedulingThroughput (pods/s, sampled each second while the measured
# pods are scheduled; no samples for runs shorter than that) and SchedulingDuration.
python3 - "$OUT" <<'PY'
import glob, json, sys
for path in sorted(glob.glob(f"{sys.argv[1]}/BenchmarkPerfScheduling_*.json")):
    for item in json.load(open(path))["dataItems"]:
        metric, data = item["labels"].get("Metric"), item.get("data") or {}
        if metric in ("SchedulingThroughput", "SchedulingDuration"):
            print(f"{item['labels']['Name']}: {metric} "
                  + ", ".join(f"{k} {v:.4g}" for k, v in data.items()) + f" {item['unit']}")
PY
log "data items (JSON, SchedulingThroughput and latencies) in $OUT"
