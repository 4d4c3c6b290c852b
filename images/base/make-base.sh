#!/usr/bin/env bash
# Creates the base tag (debian:bookworm-slim) in the local Docker engine without any image
# registry: debootstrap a minimal Debian bookworm from the Debian mirror the host already
# uses, then `docker import` it. Does nothing when the tag is already present.
#
# Environment:
#   DOCKYARD_BASE_TAG       tag to create (default debian:bookworm-slim)
#   DOCKYARD_DEBIAN_MIRROR  Debian mirror URL; default: read from the host's apt sources
set -euo pipefail

TAG="${DOCKYARD_BASE_TAG:-debian:bookworm-slim}"
SUITE=bookworm

log() { echo "make-base: $*"; }
die() { echo "make-base: error: $*" >&2; exit 1; }

# Prints the first URI of an enabled deb822 stanza (Types: deb) whose Suites list the
# given suite, then of a one-line "deb URI SUITE ..." entry. Mirrors are taken from the
# host (APT_DIR, default /etc/apt), never written into the repository.
host_mirror() {
    local suite="$1" apt="${2:-/etc/apt}" files=()
    shopt -s nullglob
    files=("$apt"/sources.list.d/*.sources)
    if ((${#files[@]})); then
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""; enabled = ""
            }
            FNR == 1 && NR > 1 { flush() }  # a stanza ends with its file
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                $1 = ""; sub(/^[ \t]+/, "")
                if (key == "types") types = $0
                else if (key == "suites") suites = $0
                else if (key == "uris") uris = $0
                else if (key == "enabled") enabled = tolower($0)
            }
            END { if (!found) flush() }
        ' "${files[@]}" | head -n1
    fi
    files=("$apt"/sources.list "$apt"/sources.list.d/*.list)
    local f
    for f in "${files[@]}"; do
        [[ -r "$f" ]] || continue
        # "deb [options] URI SUITE COMPONENTS..." with the optional [options] dropped.
        sed -E -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" \
            | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }'
    done
    shopt -u nullglob
}

main() {
    if docker image inspect "$TAG" >/dev/null 2>&1; then
        log "$TAG is already present; nothing to do"
        exit 0
    fi

    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install -y debootstrap)"
    [[ $(id -u) -eq 0 ]] || die "debootstrap needs root"

    MIRROR="${DOCKYARD_DEBIAN_MIRROR:-$(host_mirror "$SUITE" | head -n1)}"
    [[ -n "$MIRROR" ]] || die "no Debian $SUITE mirror found in /etc/apt/sources.list{,.d}; set DOCKYARD_DEBIAN_MIRROR"
    SECURITY="$(host_mirror "$SUITE-security" | head -n1)"

    WORK="$(mktemp -d /var/tmp/dockyard-base.XXXXXX)"
    ROOTFS="$WORK/rootfs"
    cleanup() {
        # debootstrap mounts /proc and /sys inside the target; never rm -rf across a mount.
        local m
        for m in $(awk -v root="$ROOTFS" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r); do
            umount -l "$m" || true
        done
        if awk -v root="$ROOTFS" 'index($2, root) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
            echo "make-base: warning: mounts remain under $ROOTFS; leaving $WORK in place" >&2
        else
            rm -rf "$WORK"
        fi
    }
    trap cleanup EXIT

    log "creating $TAG with debootstrap --variant=minbase $SUITE from $MIRROR"
    start=$SECONDS
    debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    log "debootstrap finished in $((SECONDS - start)) s"

    # Same trimming as Debian's own slim images: no docs, man pages or translations from
    # later installs, and apt drops downloaded packages after each install.
    mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
    cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"

    # Updates and security fixes from the same mirrors the host uses.
    rm -f "$ROOTFS/etc/apt/sources.list"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$MIRROR" "$SUITE" "$SUITE"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        if [[ -n "$SECURITY" ]]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$SECURITY" "$SUITE"
            printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        fi
    } >"$ROOTFS/etc/apt/sources.list.d/debian.sources"

    # What debootstrap installed before those rules existed: trim it the same way.
    find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/*.log \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian/*

    log "importing the root filesystem as $TAG"
    tar --numeric-owner -C "$ROOTFS" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' \
        -m "debootstrap --variant=minbase $SUITE" - "$TAG" >/dev/null
    log "created $TAG ($(docker image inspect -f '{{.Size}}' "$TAG") bytes) in $((SECONDS - start)) s"
}

# Sourcing the script (as its tests do) only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
