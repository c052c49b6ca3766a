#!/usr/bin/env bash
# CI stage: build plugin_image/Dockerfile for linux/amd64 and linux/arm64 into one manifest list
# with buildah, on locally made Debian bases (no container registry is reachable), then run
# each arch's image (arm64 under QEMU user emulation): `--version`, then the plugin against a
# simulated node and the kubelet simulator bind-mounted into the container.
#
# Needs root (apt-get, binfmt_misc, debootstrap, buildah storage). Without root or without a
# way to install buildah it says why and exits 0 ("skipped"); QAIC_IMAGE_STAGE=0 skips on
# purpose. Any failure after that point fails the stage.
#
# Environment:
#   QAIC_IMAGE_CACHE   cache dir for base rootfs tarballs (default /var/cache/qaic-k8s)
#   QAIC_IMAGE_SUITE   Debian suite of the local bases (default bookworm)
#   QAIC_DEBIAN_MIRROR Debian mirror (default: the one apt uses, from /etc/apt/sources.list*)
#   PIP_INDEX_URL      passed to the build when set (else pip's configured index, if any)
#   QAIC_IMAGE_KEEP=1  keep the built images and the work dir (default: keep images, drop dir)
set -euo pipefail

say() { echo "image stage: $*"; }
skip() { say "SKIPPED: $*"; exit 0; }
die() { say "FAILED: $*" >&2; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
stage_t0=$(date +%s)

[ "${QAIC_IMAGE_STAGE:-1}" != 0 ] || skip "QAIC_IMAGE_STAGE=0"
[ "$(uname -s)" = Linux ] || skip "needs Linux (buildah, binfmt_misc), this is $(uname -s)"
[ "$(id -u)" = 0 ] || skip "needs root (apt-get, binfmt_misc, debootstrap, buildah storage); running as uid $(id -u)"

# ---------------------------------------------------------------- 1. tools, binfmt_misc
host_arch=$(dpkg --print-architecture 2>/dev/null || true)
case "$host_arch" in
  amd64) foreign=arm64; qemu=qemu-aarch64 ;;
  arm64) foreign=amd64; qemu=qemu-x86_64 ;;
  *) skip "needs an amd64 or arm64 Debian-family host with dpkg (found '${host_arch:-no dpkg}')" ;;
esac
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
[ -e "/usr/bin/$qemu-static" ] || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "cannot install ${need[*]}: no apt-get on this machine"
  say "installing ${need[*]} from Debian"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        buildah qemu-user-static binfmt-support debootstrap; } >/tmp/qaic-image-apt.log 2>&1; then
    tail -5 /tmp/qaic-image-apt.log
    skip "could not install buildah/qemu-user-static/binfmt-support/debootstrap with apt-get (log above)"
  fi
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
    || skip "cannot mount binfmt_misc (unprivileged container?): no $foreign emulation"
fi
update-binfmts --enable "$qemu" >/dev/null 2>&1 || true
grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null \
  || die "binfmt handler $qemu is not enabled (see update-binfmts --display $qemu)"
say "buildah $(buildah --version | awk '{print $3}'), $qemu binfmt enabled, host $host_arch"

# ---------------------------------------------------------------- 2. local base images
suite=${QAIC_IMAGE_SUITE:-bookworm}
mirror=${QAIC_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # The URI apt uses for the main archive (deb822 .sources or one-line .list).
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' \
            | grep -v -- '-security' | grep '/debian/\?$' | head -1 || true)
  [ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
            | grep -v -- '-security' | head -1 || true)
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*; set QAIC_DEBIAN_MIRROR"
fi
base_pkgs="python3,python3-venv,libudev1,ca-certificates"
cache=${QAIC_IMAGE_CACHE:-/var/cache/qaic-k8s}
mkdir -p "$cache/base"
# The host's CA bundle goes into the base at import time (not into the cached rootfs): pip in
# the build must trust what the host trusts (e.g. an intercepting proxy's CA).
ca_sum=$(sha256sum /etc/ssl/certs/ca-certificates.crt 2>/dev/null | cut -c1-12 || echo none)

# Keyed by arch + suite + mirror + package list + this recipe's version.
recipe=3
make_rootfs() {  # arch -> prints the cached tarball path
  local arch=$1 key tar dir t0
  key=$(printf '%s\n' "$recipe" "$arch" "$suite" "$mirror" "$base_pkgs" | sha256sum | cut -c1-16)
  tar="$cache/base/$suite-$arch-$key.tar"
  if [ -s "$tar" ]; then say "base rootfs $arch: cached $tar" >&2; echo "$tar"; return; fi
  dir=$(mktemp -d "$cache/base/rootfs-$arch.XXXXXX")
  t0=$(date +%s)
  say "base rootfs $arch: debootstrap $suite from $mirror (cold: ~1 min native, ~4 min emulated)" >&2
  if ! debootstrap --variant=minbase --arch="$arch" --include="$base_pkgs" "$suite" "$dir" "$mirror" \
       >"$dir.log" 2>&1; then
    tail -20 "$dir.log" >&2; rm -rf "$dir"; die "debootstrap $arch failed"
  fi
  # Trim like the official slim images: no apt lists/caches, docs, man pages, locales, .pyc.
  rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
         "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/var/log/*.log "$dir"/var/cache/debconf/*-old
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  find "$dir/usr/lib/python3"* -name __pycache__ -type d -prune -exec rm -rf {} +
  chroot "$dir" python3 -c 'import sys, venv, ensurepip; print("base python", sys.version.split()[0])' >&2 \
    || die "base rootfs $arch: python3 does not run"
  tar -C "$dir" --numeric-owner -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  rm -rf "$dir" "$dir.log"
  say "base rootfs $arch: made in $(( $(date +%s) - t0 ))s, $(du -h "$tar" | cut -f1)" >&2
  echo "$tar"
}

import_base() {  # arch tarball -> prints the image name
  local arch=$1 tar=$2 name ctr key
  key=$(basename "$tar" .tar | sed 's/.*-//')
  name="localhost/qaic-k8s-base:$suite-$arch-$key-$ca_sum"
  if buildah inspect --type image "$name" >/dev/null 2>&1; then echo "$name"; return; fi
  ctr=$(buildah from --arch "$arch" --os linux scratch)
  buildah add "$ctr" "$tar" / >/dev/null
  [ -f /etc/ssl/certs/ca-certificates.crt ] && \
    buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah config --arch "$arch" --os linux \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 "$ctr"
  buildah commit -q --rm "$ctr" "$name" >/dev/null
  say "base image $arch: imported $name" >&2
  echo "$name"
}

exec 9>"$cache/lock"
flock 9  # one stage at a time per machine: the cache and the buildah tags are shared
# Both rootfs at once (the emulated one is the slow one); then import them.
make_rootfs arm64 >"$cache/base/.arm64.path" & rootfs_pid=$!
amd64_tar=$(make_rootfs amd64)
wait "$rootfs_pid" || die "base rootfs arm64 failed"
declare -A base
base[amd64]=$(import_base amd64 "$amd64_tar")
base[arm64]=$(import_base arm64 "$(cat "$cache/base/.arm64.path")")

# ---------------------------------------------------------------- 3. build, one manifest list
version=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' plugin_image/qaic_device_plugin/__init__.py)
name=$(python3 -c 'import json; print(json.load(open("plugin_image/image.json"))["name"])')
tag="localhost/$name:$version-ci"
if [ -z "${PIP_INDEX_URL:-}" ]; then
  idx=$(pip config get global.index-url 2>/dev/null || python3 -m pip config get global.index-url 2>/dev/null || true)
  [ -n "$idx" ] && export PIP_INDEX_URL=$idx
fi
[ -n "${PIP_INDEX_URL:-}" ] && say "pip index: $PIP_INDEX_URL" || say "pip index: pip's default"

work=$(mktemp -d /tmp/qaic-image-stage.XXXXXX)
cleanup() {
  [ -n "${plugin_pid:-}" ] && kill "$plugin_pid" 2>/dev/null || true
  [ -n "${kubelet_pid:-}" ] && kill "$kubelet_pid" 2>/dev/null || true
  for c in "${ctrs[@]:-}"; do [ -n "$c" ] && buildah rm "$c" >/dev/null 2>&1 || true; done
  [ "${QAIC_IMAGE_KEEP:-0}" = 1 ] || rm -rf "$work"
}
ctrs=()
trap cleanup EXIT

plugin_image/build-image.sh --builder buildah --tag "$tag" \
  --base "amd64=${base[amd64]}" --base "arm64=${base[arm64]}" \
  --times "$work/times" --oci-archive "$work/image.oci.tar" 2>&1 | sed 's/^/  | /'
[ "${PIPESTATUS[0]}" = 0 ] || die "build failed"
buildah manifest inspect "$tag" | python3 -c '
import json, sys
got = sorted(m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"])
sys.exit(0 if got == ["amd64", "arm64"] else f"manifest list has {got}, want amd64 and arm64")'
say "manifest list $tag: linux/amd64 + linux/arm64; OCI archive $(du -h "$work/image.oci.tar" | cut -f1)"

# ---------------------------------------------------------------- 4. run each arch
say "host venv for the simulators"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -e . >"$work/pip.log" 2>&1 || { tail -20 "$work/pip.log"; die "pip install -e . failed"; }
hostpy="$work/venv/bin/python"

descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
plugin_process() {  # pid of `buildah run` -> pid of the plugin process it runs (the first
  local p         # descendant that is not buildah's own chroot helper)
  for p in $(descendants "$1" | sort -n); do
    case "$(cat "/proc/$p/comm" 2>/dev/null)" in memfd:*|buildah*|"") continue ;; esac
    echo "$p"; return 0
  done
}

run_arch() {
  local arch=$1 img="$tag-$arch" ctr out sim rc t0 want
  say "[$arch] run $img"
  ctr=$(buildah from -q --pull=never --arch "$arch" "$img"); ctrs+=("$ctr")
  entrypoint=$(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$img")
  read -r -a entry <<<"$entrypoint"
  [ "${entry[*]}" = qaic-device-plugin ] || die "[$arch] ENTRYPOINT is '${entry[*]}'"
  out=$(buildah run --isolation chroot "$ctr" -- "${entry[@]}" --version) || die "[$arch] --version failed"
  say "[$arch] --version: $out"
  [ "$out" = "qaic-device-plugin $version" ] || die "[$arch] --version printed '$out', want 'qaic-device-plugin $version'"
  # no uname in the image (no coreutils, no shell): ask its python
  machine=$(buildah run --isolation chroot "$ctr" -- /opt/venv/bin/python -c 'import platform; print(platform.machine())')
  case "$arch:$machine" in amd64:x86_64|arm64:aarch64) ;; *) die "[$arch] runs as $machine" ;; esac

  # A fake node (2 Ultra = 8 SoCs, 1 Std, 1 Pro) and the kubelet simulator on the host; the
  # plugin in the container sees the same directory at /sim.
  sim="$work/sim-$arch"
  "$hostpy" -m qaic_device_plugin.sim.node_cli --root "$sim" --ultra 2 --std 1 --pro 1 --json >"$work/node-$arch.json"
  want=$("$hostpy" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["socs"]))' "$work/node-$arch.json")
  mkdir -p "$sim/plugins"
  "$hostpy" -m qaic_device_plugin.sim.kubelet --plugin-dir "$sim/plugins" \
    --expect "qualcomm.com/qaic=$want" --timeout 300 >"$work/kubelet-$arch.json" 2>"$work/kubelet-$arch.err" &
  kubelet_pid=$!
  for _ in $(seq 100); do [ -S "$sim/plugins/kubelet.sock" ] && break; sleep 0.2; done
  [ -S "$sim/plugins/kubelet.sock" ] || die "[$arch] kubelet simulator did not create kubelet.sock"

  t0=$(date +%s)
  buildah run --isolation chroot -v "$sim:/sim" \
    --env QAIC_SYSFS_ROOT=/sim/sys --env QAIC_DEV_ROOT=/sim/dev --env QAIC_UTIL_PATH=/sim/bin/qaic-util \
    --env QAIC_DEVICE_PLUGIN_DIR=/sim/plugins --env QAIC_METRICS_PORT=0 \
    "$ctr" -- "${entry[@]}" >"$work/plugin-$arch.log" 2>&1 &
  plugin_pid=$!
  rc=0; wait "$kubelet_pid" || rc=$?; kubelet_pid=
  if [ "$rc" != 0 ]; then
    sed 's/^/  kubelet | /' "$work/kubelet-$arch.json" "$work/kubelet-$arch.err"; sed 's/^/  plugin | /' "$work/plugin-$arch.log"
    die "[$arch] the plugin did not register and list $want healthy SoCs"
  fi
  say "[$arch] registered and listed $want SoCs in $(( $(date +%s) - t0 ))s: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["registrations"], {k: v["healthy"] for k, v in d["resources"].items()})' "$work/kubelet-$arch.json")"

  # the image has no shell: the fake qaic-util (#!/usr/bin/env python3) must still run in it
  if grep -q "no usable qaic-util\|qaic-util cannot run" "$work/plugin-$arch.log"; then
    sed 's/^/  plugin | /' "$work/plugin-$arch.log"; die "[$arch] qaic-util did not run in the container"
  fi
  local pp; pp=$(plugin_process "$plugin_pid")
  [ -n "$pp" ] || die "[$arch] cannot find the plugin process under buildah run ($plugin_pid)"
  kill -TERM "$pp"
  rc=0
  for _ in $(seq 150); do kill -0 "$plugin_pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$plugin_pid" 2>/dev/null && { sed 's/^/  plugin | /' "$work/plugin-$arch.log"; die "[$arch] plugin still running 30s after SIGTERM"; }
  wait "$plugin_pid" || rc=$?; plugin_pid=
  [ "$rc" = 0 ] || { sed 's/^/  plugin | /' "$work/plugin-$arch.log"; die "[$arch] plugin exited $rc after SIGTERM, want 0"; }
  say "[$arch] SIGTERM: plugin exited 0"
  buildah rm "$ctr" >/dev/null
}

for arch in amd64 arm64; do run_arch "$arch"; done

# ---------------------------------------------------------------- 5. sizes and times
say "image sizes (uncompressed, as 'buildah images' counts them) and build times:"
for arch in amd64 arm64; do
  size=$(buildah images --format '{{.Size}}' "$tag-$arch" | sed -n 1p)  # sed reads all: no SIGPIPE under pipefail
  bsize=$(buildah images --format '{{.Size}}' "${base[$arch]}" | sed -n 1p)
  secs=$(awk -v p="linux/$arch" '$1 == p {print $2}' "$work/times")
  printf '  %-6s image %-9s (local base %s)  build %ss\n' "$arch" "$size" "$bsize" "$secs"
done
say "measure again with: for a in amd64 arm64; do buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' $tag-\$a; done"
# earlier runs' images lose their tags to this run's: drop them so storage does not grow per run
buildah rmi --prune >/dev/null 2>&1 || true
say "passed in $(( $(date +%s) - stage_t0 ))s"
