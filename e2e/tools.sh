#!/usr/bin/env bash
# Build (or fetch) the real tools the e2e suite runs, into a cache keyed by version:
#   $QAIC_TOOLS_DIR (default /var/cache/qaic-k8s/tools)/<component>-<version>/bin/...
# Each component is built once per machine; a finished one has a `.done` marker.
#
# Offline machines (only package registries reachable; ../shared/REAL_PARTS.md):
#   Kubernetes (kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)
#   and etcd are built from the Go module proxy through wrapper modules; so are the Pulumi
#   CLI, its Python language host and pulumi-resource-kubernetes. containerd, runc and the
#   CNI plugins come from Debian (see e2e/host-packages.sh).
# Machines with internet (QAIC_TOOLS_DOWNLOAD=1): the official release binaries instead
#   (get.pulumi.com tarball, dl.k8s.io binaries, etcd's GitHub release). That branch is
#   kept small and cannot run here.
#
# Usage: e2e/tools.sh [component...]   (default: all). Prints the bin directories.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
PULUMI_VERSION=${PULUMI_VERSION:-v3.276.0}
PULUMI_LANGHOST_SDK=${PULUMI_LANGHOST_SDK:-v3.75.0}   # last sdk/v3 carrying the python host as a package
PULUMI_K8S_PROVIDER_PSEUDO=${PULUMI_K8S_PROVIDER_PSEUDO:-v4.0.0-20260115033456-f47bc2d6f199}
PULUMI_K8S_VERSION=${PULUMI_K8S_VERSION:-4.25.0}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}   # with CDI, for DRA pods (cluster/)
INTEL_NPU_VERSION=${INTEL_NPU_VERSION:-v0.36.0}   # the Go peer of bench's side-by-side mode
TOOLS=${QAIC_TOOLS_DIR:-/var/cache/qaic-k8s/tools}
export GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local
mkdir -p "$TOOLS"
log() { echo "== tools: $*" >&2; }

staging_version() { echo "v0.${1#v1.}"; }   # v1.37.2 -> v0.37.2

# wrapper DIR MODULE@VERSION: a fresh wrapper module dir with go.mod requiring MODULE.
wrapper() {
  local dir=$1 req=$2
  rm -rf "$dir"; mkdir -p "$dir"
  printf 'module wrapper\n\ngo 1.26.0\n\nrequire %s\n' "${req/@/ }" > "$dir/go.mod"
}

gomod_of() {  # the go.mod file of MODULE@VERSION in the module cache
  go mod download -json "$1" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p'
}
moddir_of() {
  go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'
}

build_kubernetes() {
  local out="$TOOLS/kubernetes-$K8S_VERSION" sv; sv=$(staging_version "$K8S_VERSION")
  [ -f "$out/.done" ] && return 0
  if [ "${QAIC_TOOLS_DOWNLOAD:-0}" = 1 ]; then
    mkdir -p "$out/bin"
    for b in kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      curl -fsSLo "$out/bin/$b" "https://dl.k8s.io/release/$K8S_VERSION/bin/linux/$(go env GOARCH)/$b"
      chmod +x "$out/bin/$b"
    done
    touch "$out/.done"; return 0
  fi
  log "kubernetes $K8S_VERSION from the module proxy (8-20 min)"
  local w="$TOOLS/.build/kubernetes"; wrapper "$w" "k8s.io/kubernetes@$K8S_VERSION"
  local mod; mod=$(gomod_of "k8s.io/kubernetes@$K8S_VERSION")
  { echo; echo "replace ("
    grep -E '^\s+k8s.io/[a-z0-9-]+ => ./staging' "$mod" | awk -v v="$sv" '{print "\t"$1" => "$1" "v}'
    echo ")"; echo "godebug default=go1.26"; } >> "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n' > "$w/tools.go"
  for c in kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c" >> "$w/tools.go"
  done
  printf ')\n' >> "$w/tools.go"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  (cd "$w" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -o "$out/bin/" \
     -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
     k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-apiserver \
     k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
     k8s.io/kubernetes/cmd/kubectl)
  touch "$out/.done"
}

build_etcd() {
  local out="$TOOLS/etcd-$ETCD_VERSION"
  [ -f "$out/.done" ] && return 0
  if [ "${QAIC_TOOLS_DOWNLOAD:-0}" = 1 ]; then
    mkdir -p "$out/bin"
    curl -fsSL "https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION/etcd-$ETCD_VERSION-linux-$(go env GOARCH).tar.gz" \
      | tar -xz -C "$out/bin" --strip-components=1 --wildcards '*/etcd'
    touch "$out/.done"; return 0
  fi
  log "etcd $ETCD_VERSION from the module proxy (~2 min)"
  local w="$TOOLS/.build/etcd"; wrapper "$w" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
    printf 'require go.etcd.io/etcd/%s %s\n' "$m" "$ETCD_VERSION" >> "$w/go.mod"
  done
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$w/tools.go"
  (cd "$w" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3)
  touch "$out/.done"
}

build_pulumi() {
  local out="$TOOLS/pulumi-$PULUMI_VERSION"
  [ -f "$out/.done" ] && return 0
  if [ "${QAIC_TOOLS_DOWNLOAD:-0}" = 1 ]; then
    mkdir -p "$out"
    curl -fsSL "https://get.pulumi.com/releases/sdk/pulumi-$PULUMI_VERSION-linux-x64.tar.gz" \
      | tar -xz -C "$out" && mv "$out/pulumi" "$out/bin"
    touch "$out/.done"; return 0
  fi
  log "pulumi CLI $PULUMI_VERSION from the module proxy (10-25 min)"
  local w="$TOOLS/.build/pulumi"; wrapper "$w" "github.com/pulumi/pulumi/pkg/v3@$PULUMI_VERSION"
  printf 'require github.com/pulumi/pulumi/sdk/v3 %s\n\nreplace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e\n' \
    "$PULUMI_VERSION" >> "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"\n' > "$w/tools.go"
  mkdir -p "$out/bin"
  (cd "$w" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -o "$out/bin/pulumi" \
     -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
     github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  # the Python language host: its exec shims ship as files in the CLI version's sdk module
  local sdk; sdk=$(moddir_of "github.com/pulumi/pulumi/sdk/v3@$PULUMI_VERSION")
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$out/bin/"
  install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$out/bin/"
  log "pulumi-language-python from sdk/v3 $PULUMI_LANGHOST_SDK (~1 min)"
  local w2="$TOOLS/.build/pulumi-langhost"; wrapper "$w2" "github.com/pulumi/pulumi/sdk/v3@$PULUMI_LANGHOST_SDK"
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python"\n' > "$w2/tools.go"
  (cd "$w2" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -ldflags "-s -w" -o "$out/bin/pulumi-language-python" \
     github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python)
  touch "$out/.done"
}

build_pulumi_kubernetes() {
  local out="$TOOLS/pulumi-resource-kubernetes-$PULUMI_K8S_VERSION"
  [ -f "$out/.done" ] && return 0
  if [ "${QAIC_TOOLS_DOWNLOAD:-0}" = 1 ]; then
    mkdir -p "$out/bin"
    curl -fsSL "https://github.com/pulumi/pulumi-kubernetes/releases/download/v$PULUMI_K8S_VERSION/pulumi-resource-kubernetes-v$PULUMI_K8S_VERSION-linux-amd64.tar.gz" \
      | tar -xz -C "$out/bin" pulumi-resource-kubernetes
    touch "$out/.done"; return 0
  fi
  log "pulumi-resource-kubernetes $PULUMI_K8S_VERSION from the module proxy (10-30 min)"
  local m="github.com/pulumi/pulumi-kubernetes/provider/v4"
  local src; src=$(moddir_of "$m@$PULUMI_K8S_PROVIDER_PSEUDO")
  local local="$TOOLS/.build/pulumi-kubernetes-provider"
  rm -rf "$local"; cp -r "$src" "$local"; chmod -R u+w "$local"
  # the zip lacks the go:embed targets: minified copies of the schema and terraform mapping
  python3 - "$local/cmd/pulumi-resource-kubernetes" "$PULUMI_K8S_VERSION" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
schema = json.loads((d / "schema.json").read_text())
schema["version"] = sys.argv[2]
(d / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
tm = d / "terraform-mapping.json"
(d / "terraform-mapping-embed.json").write_text(
    json.dumps(json.loads(tm.read_text()), separators=(",", ":")) if tm.exists() else "{}")
PY
  sed -i '/=> \.\.\/sdk/d' "$local/go.mod"
  local w="$TOOLS/.build/pulumi-kubernetes"; wrapper "$w" "$m@$PULUMI_K8S_PROVIDER_PSEUDO"
  printf 'require github.com/pulumi/pulumi-kubernetes/sdk/v4 v%s\n\nreplace %s => %s\n' \
    "$PULUMI_K8S_VERSION" "$m" "$local" >> "$w/go.mod"
  # the provider module's own non-local replaces apply only in the main module: repeat them
  awk '/^replace \($/{r=1;next} r&&/^\)/{r=0} r&&!/=> \./{print "replace "$0} /^replace [^(]/&&!/=> \./{print}' \
    "$local/go.mod" >> "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/pulumi-resource-kubernetes"\n' "$m" > "$w/tools.go"
  mkdir -p "$out/bin"
  (cd "$w" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -o "$out/bin/pulumi-resource-kubernetes" \
     -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$PULUMI_K8S_VERSION" \
     "$m/cmd/pulumi-resource-kubernetes")
  touch "$out/.done"
}

# Debian bookworm's containerd 1.6.20 ignores the CDI device names kubelet passes for DRA
# claims; containerd v2 applies them (CDI is always on from v2.4). github.com/containerd/
# containerd/v2 has no replace directives, so `go install MOD/cmd/x@V` builds it from the
# proxy without a wrapper module (v2.4.2's go.mod asks for go >= 1.26.6). Tags as the
# static release (Makefile STATIC=1: osusergo netgo static_build, urfave_cli_no_docs; the
# shim adds no_grpc); btrfs needs cgo (excluded by CGO_ENABLED=0 anyway, no_btrfs makes it
# explicit); devmapper and zfs snapshotters are left out (not used here).
# Cold build (empty GOCACHE, modules downloaded from the proxy): ~75 s for all three.
# Use: containerd's PATH must start with this bin dir, since the runtime manager execs
# `containerd-shim-runc-v2` from PATH and Debian's 1.6 shim is in /usr/bin.
# runc stays Debian's 1.1.5 (/usr/sbin/runc, set as BinaryName in the config).
build_containerd() {
  local out="$TOOLS/containerd-$CONTAINERD_VERSION"
  [ -f "$out/.done" ] && return 0
  if [ "${QAIC_TOOLS_DOWNLOAD:-0}" = 1 ]; then
    mkdir -p "$out"
    # the static release tarball: bin/{containerd,containerd-shim-runc-v2,ctr,containerd-stress}
    curl -fsSL "https://github.com/containerd/containerd/releases/download/$CONTAINERD_VERSION/containerd-static-${CONTAINERD_VERSION#v}-linux-$(go env GOARCH).tar.gz" \
      | tar -xz -C "$out" bin/containerd bin/containerd-shim-runc-v2 bin/ctr
    touch "$out/.done"; return 0
  fi
  log "containerd $CONTAINERD_VERSION from the module proxy (~1-3 min)"
  local m="github.com/containerd/containerd/v2"
  local tags="urfave_cli_no_docs osusergo netgo static_build no_btrfs no_devmapper no_zfs"
  local ld="-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m -extldflags -static"
  mkdir -p "$out/bin"
  (cd "$TOOLS" && export GOBIN="$out/bin"
   go install -trimpath -tags "$tags" -ldflags "$ld" "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION"
   go install -trimpath -tags "$tags no_grpc" -ldflags "$ld" "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION")
  "$out/bin/containerd" --version | grep -qF " $CONTAINERD_VERSION"
  touch "$out/.done"
}

# Intel's NPU device plugin, the Go peer `python -m bench` measures ours against (issue 11):
# a static binary; its go.mod has replaces, so `go install` is refused and a wrapper module
# repeats its replace block verbatim (REAL_PARTS.md section 1). Not part of the default set:
# bench asks for it (bench/peer.py), e2e does not need it.
build_intel_npu_plugin() {
  local out="$TOOLS/intel-npu-plugin-$INTEL_NPU_VERSION"
  [ -f "$out/.done" ] && return 0
  log "intel npu_plugin $INTEL_NPU_VERSION from the module proxy (~2-5 min cold)"
  local m="github.com/intel/intel-device-plugins-for-kubernetes"
  local w="$TOOLS/.build/intel-npu-plugin"; wrapper "$w" "$m@$INTEL_NPU_VERSION"
  local mod; mod=$(gomod_of "$m@$INTEL_NPU_VERSION")
  # every replace line or block of the module's go.mod, as written
  awk '/^replace \($/{r=1} r{print} r&&/^\)/{r=0;next} /^replace [^(]/{print}' "$mod" >> "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/npu_plugin"\n' "$m" > "$w/tools.go"
  mkdir -p "$out/bin"
  (cd "$w" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -ldflags "all=-w -s" -o "$out/bin/npu_plugin" "$m/cmd/npu_plugin")
  touch "$out/.done"
}

# kwok, the fake-node controller `python -m bench scale` runs (issue 22): a wrapper module
# requiring sigs.k8s.io/kwok (REAL_PARTS.md section 5), a static binary, plus one --config
# file of the Stage objects that ship in the module (v0.8.0 exits "no stages found" without
# them): fast node init + heartbeat, fast pod ready/complete/delete. Not in the default set:
# the scale bench asks for it (bench/scale/kwok.py), e2e does not need it.
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
build_kwok() {
  local out="$TOOLS/kwok-$KWOK_VERSION"
  [ -f "$out/.done" ] && return 0
  log "kwok $KWOK_VERSION from the module proxy (~1.5 min)"
  local m="sigs.k8s.io/kwok"
  local w="$TOOLS/.build/kwok"; wrapper "$w" "$m@$KWOK_VERSION"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/kwok"\n' "$m" > "$w/tools.go"
  mkdir -p "$out/bin"
  (cd "$w" && go mod tidy >/dev/null 2>&1 || go mod tidy
   go build -mod=mod -trimpath -ldflags "-s -w" -o "$out/bin/kwok" "$m/cmd/kwok")
  local src; src=$(moddir_of "$m@$KWOK_VERSION")/kustomize/stage
  local f first=1
  : > "$out/stages.yaml"
  for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [ "$first" = 1 ] || echo "---" >> "$out/stages.yaml"
    first=0; cat "$src/$f" >> "$out/stages.yaml"
  done
  touch "$out/.done"
}

components=("$@"); [ ${#components[@]} -gt 0 ] || components=(kubernetes etcd containerd pulumi pulumi_kubernetes)
for c in "${components[@]}"; do
  t=$(date +%s); "build_$c"; log "$c ready ($(( $(date +%s) - t )) s)"
done
