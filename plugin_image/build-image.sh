#!/usr/bin/env bash
# Build the qaic-device-plugin image for every platform in plugin_image/image.json into ONE
# manifest list, with `docker buildx` when it is present, else with `buildah`.
#
#   plugin_image/build-image.sh [options]
#     --tag REF              image reference (default: <image.json name>:<package version>)
#     --platforms LIST       comma list (default: image.json "platforms")
#     --build-arg K=V        extra/override build arg (repeatable; image.json "build_args" first)
#     --base ARCH=IMAGE      BASE_IMAGE for one arch only (repeatable; buildah; used by CI for
#                            locally made per-arch bases)
#     --oci-archive FILE     also export the whole manifest list as an OCI archive
#     --push [REF]           push the manifest list (all arches) to REF (default: --tag)
#     --builder buildx|buildah   force a builder (default: buildx if usable, else buildah)
#     --times FILE           append "platform seconds" lines (per-arch build time; buildah)
#
# Environment: PIP_INDEX_URL (passed as a build arg when set), VERSION, REVISION, SOURCE,
# BUILDAH_ISOLATION (default chroot), BUILDAH_NETWORK (default host).
# The build context is the repository root (pyproject.toml is there); see .dockerignore.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cfg="$here/image.json"

json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); exec(sys.argv[2])' "$cfg" "$1"; }

name=$(json 'print(d["name"])')
context="$root/$(json 'print(d["context"])')"
dockerfile="$root/$(json 'print(d["dockerfile"])')"
platforms=$(json 'print(",".join(d["platforms"]))')
mapfile -t cfg_args < <(json 'print("\n".join(f"{k}={v}" for k, v in d.get("build_args", {}).items()))')

version=${VERSION:-$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$root/plugin_image/qaic_device_plugin/__init__.py")}
revision=${REVISION:-$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)}
created=$(git -C "$root" log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=${SOURCE:-$(git -C "$root" remote get-url origin 2>/dev/null || true)}

tag="" push="" push_ref="" oci="" builder="" times=""
extra_args=()
declare -A base_for=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --platforms) platforms=$2; shift 2 ;;
    --build-arg) extra_args+=("$2"); shift 2 ;;
    --base) base_for[${2%%=*}]=${2#*=}; shift 2 ;;
    --oci-archive) oci=$2; shift 2 ;;
    --push) push=1; if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then push_ref=$2; shift; fi; shift ;;
    --builder) builder=$2; shift 2 ;;
    --times) times=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
tag=${tag:-$name:$version}
push_ref=${push_ref:-$tag}

# image.json defaults, then ours, then the caller's (later wins for both docker and buildah).
args=()
for a in "${cfg_args[@]}"; do [ -n "$a" ] && args+=(--build-arg "$a"); done
args+=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
[ -n "$source_url" ] && args+=(--build-arg "SOURCE=$source_url")
[ -n "${PIP_INDEX_URL:-}" ] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
for a in "${extra_args[@]}"; do args+=(--build-arg "$a"); done

if [ -z "$builder" ]; then
  # buildx counts only when it has a builder it can reach (a docker CLI without a daemon does not)
  if command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1 \
     && docker buildx inspect >/dev/null 2>&1; then builder=buildx
  elif command -v buildah >/dev/null 2>&1; then builder=buildah
  else echo "build-image.sh: neither 'docker buildx' nor 'buildah' is available" >&2; exit 1; fi
fi
echo "build-image.sh: $builder, $tag, platforms $platforms, version $version, revision $revision"

if [ "$builder" = buildx ]; then
  [ ${#base_for[@]} -eq 0 ] || { echo "build-image.sh: --base needs buildah" >&2; exit 2; }
  out=()
  if [ -n "$push" ]; then out=(--push -t "$push_ref")
  elif [ -n "$oci" ]; then out=(--output "type=oci,dest=$oci" -t "$tag")
  else
    out=(-t "$tag")
    echo "build-image.sh: multi-platform result stays in the buildx cache (use --push or --oci-archive)"
  fi
  docker buildx build --platform "$platforms" -f "$dockerfile" "${args[@]}" "${out[@]}" "$context"
  if [ -n "$push" ] && [ -n "$oci" ]; then
    docker buildx build --platform "$platforms" -f "$dockerfile" "${args[@]}" \
      --output "type=oci,dest=$oci" -t "$tag" "$context"
  fi
  exit 0
fi

# buildah: one build per platform, tagged <tag>-<arch> (so it can be run by name) and added to
# the one manifest list <tag>, so each arch can get its own BASE_IMAGE and
# its own build time.
isolation=${BUILDAH_ISOLATION:-chroot}
network=${BUILDAH_NETWORK:-host}
if buildah manifest inspect "$tag" >/dev/null 2>&1; then buildah manifest rm "$tag" >/dev/null; fi
if buildah inspect --type image "$tag" >/dev/null 2>&1; then buildah rmi -f "$tag" >/dev/null; fi
buildah manifest create "$tag" >/dev/null
IFS=, read -r -a plats <<<"$platforms"
for p in "${plats[@]}"; do
  arch=${p#*/}; arch=${arch%%/*}
  pargs=("${args[@]}")
  [ -n "${base_for[$arch]:-}" ] && pargs+=(--build-arg "BASE_IMAGE=${base_for[$arch]}")
  t0=$(date +%s.%N)
  buildah build --layers --isolation "$isolation" --network "$network" --platform "$p" \
    -f "$dockerfile" "${pargs[@]}" -t "$tag-$arch" "$context"
  buildah manifest add "$tag" "containers-storage:$tag-$arch" >/dev/null
  secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
  echo "build-image.sh: built $p in ${secs}s"
  [ -n "$times" ] && echo "$p $secs" >>"$times"
done
buildah manifest inspect "$tag" | python3 -c 'import json,sys; [print("  manifest:", m["platform"]["os"] + "/" + m["platform"]["architecture"], m["digest"]) for m in json.load(sys.stdin)["manifests"]]'

if [ -n "$oci" ]; then
  rm -f "$oci"
  buildah manifest push --all "$tag" "oci-archive:$oci:$tag"
  echo "build-image.sh: wrote $oci"
fi
if [ -n "$push" ]; then
  buildah manifest push --all "$tag" "docker://$push_ref"
  echo "build-image.sh: pushed $push_ref"
fi
