#!/bin/sh
# Adds the CA certificates of an extra bundle (the build context's build-ca.crt, e.g. the
# root of an intercepting HTTPS proxy) to the image's trust store. An empty bundle adds
# nothing. Needs the ca-certificates package.
#
# update-ca-certificates expects one certificate per file: a multi-certificate file would be
# appended to the bundle whole, but `openssl rehash` and Java's keystore hook only see its
# first certificate. So the bundle is split, and certificates the system store already
# holds are skipped: a copy of a host's complete bundle adds only what Debian lacks.
set -eu

bundle="${1:?usage: install-build-ca.sh BUNDLE}"
system=/etc/ssl/certs/ca-certificates.crt
dest=/usr/local/share/ca-certificates/dockyard

[ -f "$system" ] || { echo "install-build-ca: $system missing (install ca-certificates first)" >&2; exit 1; }
mkdir -p "$dest"

added=$(awk -v dest="$dest" -v sysbundle="$system" '
    function norm(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
    BEGIN {
        while ((getline line < sysbundle) > 0) {
            line = norm(line)
            if (line == "-----BEGIN CERTIFICATE-----") { inside = 1; body = "" }
            else if (line == "-----END CERTIFICATE-----") { known[body] = 1; inside = 0 }
            else if (inside) body = body line
        }
        close(sysbundle)
        inside = 0
    }
    {
        line = norm($0)
        if (line == "-----BEGIN CERTIFICATE-----") { inside = 1; body = ""; pem = line "\n" }
        else if (line == "-----END CERTIFICATE-----" && inside) {
            inside = 0
            if (!(body in known)) {
                known[body] = 1
                n++
                file = sprintf("%s/build-ca-%03d.crt", dest, n)
                printf "%s%s\n", pem, line > file
                close(file)
            }
        }
        else if (inside) { body = body line; pem = pem line "\n" }
    }
    END { print n + 0 }
' "$bundle")

echo "install-build-ca: $added certificate(s) not already trusted were added"
if [ "$added" -gt 0 ]; then
    # --fresh rebuilds every consumer (the PEM bundle and, when installed, Java's keystore).
    update-ca-certificates --fresh >/dev/null
else
    rmdir "$dest" 2>/dev/null || true
fi
