#!/usr/bin/env bash
# Builds the eventpipe OCI image from an already built release binary (see Containerfile):
#   cargo build --release && deploy/container/build.sh [TAG]      (default localhost/eventpipe:latest)
# Stages the build context in a temp directory — the binary (debug info stripped, symbols kept),
# schemas/, the built-in config, and a root filesystem made of the Debian packages that own the
# libraries `ldd` says the binary needs, at the versions installed here (the glibc it was linked
# against) — then runs `buildah bud`. Packages are downloaded once with apt-get into
# target/container/debs/. Environment: IMAGE_BIN (default target/release/eventpipe),
# BUILDAH_STORAGE_DRIVER (default vfs).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-localhost/eventpipe:latest}
BIN=${IMAGE_BIN:-target/release/eventpipe}
BUILDAH=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")

die() { echo "deploy/container/build.sh: $*" >&2; exit 1; }
for tool in buildah apt-get dpkg dpkg-deb ldd objcopy; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y buildah binutils (or run scripts/setup.sh)"
done
[[ -x $BIN ]] || die "$BIN does not exist: run cargo build --release first"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/var/lib" "$ctx/volume" target/container/debs

# The packages owning every library the dynamic linker will load (path as ldd prints it).
mapfile -t libs < <(ldd "$BIN" | awk '/=> \//{print $3} /^[[:space:]]*\/lib/{print $1}')
[[ ${#libs[@]} -gt 0 ]] || die "ldd found no libraries in $BIN (statically linked? then drop rootfs/)"
declare -A pkgs=()
for lib in "${libs[@]}"; do
  owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null) \
    || die "no Debian package owns $lib"
  pkgs[${owner%%: *}]=1
done
for pkg in "${!pkgs[@]}"; do
  version=$(dpkg-query -W -f='${Version}' "$pkg")
  cache="target/container/debs/${pkg%%:*}_${version//:/%3a}"
  if ! compgen -G "$cache/*.deb" >/dev/null; then
    mkdir -p "$cache"
    (cd "$cache" && apt-get download -q "$pkg=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) \
      || die "apt-get download $pkg=$version failed (network, or the version left the mirror)"
  fi
  for deb in "$cache"/*.deb; do dpkg-deb -x "$deb" "$ctx/rootfs"; done
  echo "image: $pkg $version" >&2
done
# Keep licences, drop what nothing in the image reads (manuals, iconv modules: Rust never uses them).
find "$ctx/rootfs/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
rm -rf "$ctx/rootfs/usr/share/"{man,info,lintian} "$ctx/rootfs/usr/lib/x86_64-linux-gnu/gconv"
cp -a deploy/container/rootfs/. "$ctx/rootfs/"
# Mount points a runtime (or the smoke test) mounts over.
mkdir -p "$ctx/rootfs/"{proc,sys,dev,run}
install -d -m 1777 "$ctx/rootfs/tmp"

objcopy --strip-debug "$BIN" "$ctx/eventpipe"
cp -a schemas "$ctx/schemas"
cp deploy/container/eventpipe.toml "$ctx/eventpipe.toml"

previous=$("${BUILDAH[@]}" images -q "$TAG" 2>/dev/null || true)
"${BUILDAH[@]}" bud --isolation chroot --quiet -f "$PWD/deploy/container/Containerfile" -t "$TAG" "$ctx" >/dev/null
built=$("${BUILDAH[@]}" images -q "$TAG")
# The previous image of this tag is now untagged: remove it (vfs keeps whole copies).
if [[ -n $previous && $previous != "$built" ]]; then
  "${BUILDAH[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
echo "image: built $TAG ($built, $("${BUILDAH[@]}" images --format '{{.Size}}' "$TAG"))" >&2
