#!/bin/sh
# Run apt-get/apt-cache with a private configuration under $APT_DIR, built
# from the Debian mirrors this machine's apt is already configured with.
# The system's apt configuration and state are never written.
#
#   scripts/private-apt.sh update
#   scripts/private-apt.sh apt-get source --download-only qemu=VERSION
#   scripts/private-apt.sh apt-cache showsrc qemu
#
# Sources: deb and deb-src for every Debian suite the system uses, plus the
# codename's -backports suite (upstream QEMU 10.0 and libvirt come from it).
set -eu
APT_DIR=${APT_DIR:-$(cd "$(dirname "$0")/.." && pwd)/build/apt}
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" \
         "$APT_DIR/etc/preferences.d" "$APT_DIR/etc/apt.conf.d"

opts="-o Dir::Etc::SourceList=$APT_DIR/etc/sources.list
 -o Dir::Etc::SourceParts=$APT_DIR/etc/sources.list.d
 -o Dir::Etc::Preferences=$APT_DIR/etc/preferences
 -o Dir::Etc::PreferencesParts=$APT_DIR/etc/preferences.d
 -o Dir::State::Lists=$APT_DIR/lists
 -o Dir::Cache=$APT_DIR/cache
 -o APT::Sandbox::User=root
 -o Debug::NoLocking=1"

list_suites() {
    # "500 http://mirror/debian bookworm-security/main amd64 Packages" plus the
    # "release ...o=Debian..." line below it, as printed by the system's apt.
    apt-cache policy | awk '
        /^ *[0-9]+ [a-z]+:\/\/[^ ]+ [^ ]+\/[^ ]+ [^ ]+ Packages$/ {
            uri = $2; split($3, sc, "/"); next_is_rel = 1; next
        }
        next_is_rel && /release .*o=Debian/ { print uri, sc[1], sc[2] }
        { next_is_rel = 0 }' | sort -u > "$APT_DIR/etc/suites"
}

write_sources() {
    list_suites
    if [ ! -s "$APT_DIR/etc/suites" ] && [ "$(id -u)" = 0 ]; then
        # apt only shows the suites it has lists for (a fresh machine has none)
        apt-get -q update >/dev/null
        list_suites
    fi
    if [ ! -s "$APT_DIR/etc/suites" ]; then
        echo "private-apt: the system apt has no Debian suites configured" \
             "(run 'apt-get update' first)" >&2
        exit 1
    fi
    key=/usr/share/keyrings/debian-archive-keyring.gpg
    mkdir -p "$APT_DIR/etc/sources.list.d"
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    {
        while read -r uri suite comp; do
            echo "deb [signed-by=$key] $uri $suite $comp"
            echo "deb-src [signed-by=$key] $uri $suite $comp"
            if [ "$suite" = "$codename" ]; then
                echo "deb [signed-by=$key] $uri $codename-backports $comp"
                echo "deb-src [signed-by=$key] $uri $codename-backports $comp"
            fi
        done < "$APT_DIR/etc/suites"
    } | sort -u > "$APT_DIR/etc/sources.list"
}

cmd=$1; shift
case "$cmd" in
update)
    write_sources
    # shellcheck disable=SC2086
    apt-get $opts -q update
    ;;
apt-get|apt-cache)
    # shellcheck disable=SC2086
    exec "$cmd" $opts "$@"
    ;;
*)
    echo "usage: $0 update | apt-get ARGS | apt-cache ARGS" >&2
    exit 2
    ;;
esac
