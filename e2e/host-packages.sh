#!/usr/bin/env bash
# The Debian packages the e2e cluster (cluster/) needs on the host, installed when missing:
# containerd + runc (the node's runtime), containernetworking-plugins (pod network: bridge,
# host-local, loopback in /usr/lib/cni), busybox-static (the pause and sample images),
# buildah (builds those images; the image stage also uses it), iptables (the one Service
# rule the harness adds inside its own network namespace), iproute2 + util-linux (netns,
# veth, nsenter), openssl (the cluster's certificates).
# Needs root and apt-get; without them it says so and exits 0 (the cluster tests then say
# what is missing, and fail under QAIC_E2E_REQUIRED=1).
set -euo pipefail
say() { echo "== host packages: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "not root: not installing"; exit 0; }
command -v apt-get >/dev/null || { say "no apt-get: not installing"; exit 0; }
need=()
for pair in containerd:containerd runc:runc buildah:buildah iptables:iptables ip:iproute2 \
            nsenter:util-linux openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ! ldd /bin/busybox >/dev/null 2>&1 \
  || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] && exit 0
say "installing ${need[*]}"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
