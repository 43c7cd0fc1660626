#!/usr/bin/env bash
# Build the AgentIDE sandbox image.
#
#   compose/sandbox/build.sh            # builds $AGENTIDE_SANDBOX_IMAGE (default agentide-sandbox:latest)
#   compose/sandbox/build.sh --force    # rebuild even when the context hash is unchanged
#
# No container registry is reachable, so nothing is pulled: when the base image
# (debian:bookworm-slim) is not already present locally, a minimal bookworm root filesystem
# is made with debootstrap from the machine's own Debian mirror (read from /etc/apt) and
# imported under a local tag. The image carries a label with a hash of its build context;
# when it matches, the build is skipped, so running this script again is cheap.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

image="${AGENTIDE_SANDBOX_IMAGE:-agentide-sandbox:latest}"
upstream_base="${AGENTIDE_SANDBOX_UPSTREAM_BASE:-debian:bookworm-slim}"
local_base="${AGENTIDE_SANDBOX_LOCAL_BASE:-agentide-base:bookworm}"
suite="bookworm"
runner="$repo/agentide/sandboxes/runner/runner.py"
wrapper="$repo/agentide/sandboxes/runner/command.sh"
hash_label="org.agentide.context-hash"
# Packages the sandbox needs; the Dockerfile installs any that the base lacks.
packages="bash,coreutils,procps,git,python3,python3-venv,python3-pip,ca-certificates,less"

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; fi

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found; install docker.io (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running? DOCKER_HOST=${DOCKER_HOST:-unset})"
[[ -f "$runner" ]] || die "runner not found at $runner"
[[ -f "$wrapper" ]] || die "command wrapper not found at $wrapper"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# First Debian mirror URI serving "$suite" from the machine's apt configuration, either
# one-line sources.list format or deb822 .sources files.
debian_mirror() {
    if [[ -n "${AGENTIDE_DEBIAN_MIRROR:-}" ]]; then echo "$AGENTIDE_DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        # deb [options] URI SUITE COMPONENTS...
        uri="$(awk -v s="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) { print $i; exit }
            }' "$f")"
        if [[ -n "$uri" ]]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        # deb822 stanzas are separated by blank lines; pick one with Types: deb and our suite.
        uri="$(awk -v s="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "uris:"   { $1 = ""; uris = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            END { if (!found) flush() }' "$f")"
        if [[ -n "$uri" ]]; then echo "$uri"; return; fi
    done
    die "no Debian mirror for $suite found in /etc/apt/sources.list{,.d/}; set AGENTIDE_DEBIAN_MIRROR"
}

debian_keyring() {
    local k
    for k in /usr/share/keyrings/debian-archive-keyring.gpg /etc/apt/trusted.gpg.d/debian-archive-$suite-stable.gpg; do
        if [[ -f "$k" ]]; then echo "$k"; return; fi
    done
}

build_local_base() {
    command -v debootstrap >/dev/null 2>&1 \
        || die "no $upstream_base image locally and debootstrap is missing; apt-get install debootstrap"
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root to build the base image"
    local mirror keyring rootfs
    mirror="$(debian_mirror)"
    keyring="$(debian_keyring)"
    rootfs="$(mktemp -d /var/tmp/agentide-rootfs.XXXXXX)"
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf '$rootfs'" EXIT
    log "building $local_base with debootstrap ($suite, minbase) from $mirror"
    debootstrap --variant=minbase ${keyring:+--keyring="$keyring"} \
        --include="$packages" "$suite" "$rootfs" "$mirror" >&2 \
        || die "debootstrap failed (see output above)"
    # Keep the image small and free of the build machine's state.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache
    echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
    tar --numeric-owner -C "$rootfs" -c . \
        | docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$local_base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "imported $local_base"
}

if image_exists "$upstream_base"; then
    base="$upstream_base"
else
    base="$local_base"
    image_exists "$local_base" || build_local_base
fi

context="$(mktemp -d /var/tmp/agentide-context.XXXXXX)"
# shellcheck disable=SC2064
trap "rm -rf '$context'" EXIT
cp "$here/Dockerfile" "$context/Dockerfile"
cp "$runner" "$context/runner.py"
cp "$wrapper" "$context/command.sh"

# The hash covers everything that shapes the image: the context files, the package list
# and the base image id (a rebuilt base gives a new image).
base_id="$(docker image inspect --format '{{.Id}}' "$base")"
hash="$( (cd "$context" && sha256sum Dockerfile runner.py command.sh; echo "$packages $base_id") | sha256sum | cut -c1-32)"

if [[ $force == 0 ]] && image_exists "$image"; then
    current="$(docker image inspect --format "{{ index .Config.Labels \"$hash_label\" }}" "$image" 2>/dev/null || true)"
    if [[ "$current" == "$hash" ]]; then
        log "$image is up to date ($hash)"
        exit 0
    fi
fi

previous="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
log "building $image from $base"
# The build may need the mirror (a slim upstream base lacks git/python3); the host network
# is used for that step only. Sandboxes themselves run with no network.
docker build --network host \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "PACKAGES=${packages//,/ }" \
    --label "$hash_label=$hash" \
    --tag "$image" "$context" >&2
log "built $image ($hash)"
# Drop the image this one replaces; the engine refuses while containers still use it.
if [[ -n "$previous" && "$previous" != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
