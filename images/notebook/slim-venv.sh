#!/bin/sh
# Removes from the freshly installed virtualenv what no notebook or job can use, in the same
# layer as the install (a later layer could not give the bytes back):
# - test suites shipped inside packages (never imported);
# - pyspark's Spark Connect Scala REPL (jars/connect-repl, used only by the Scala
#   spark-connect-shell; it is not on Spark's classpath);
# - RocksDB JNI libraries for other platforms (~190 MB uncompressed inside one jar: Spark
#   loads only the one for this OS and CPU).
set -eu
venv="${1:-/opt/venv}"
site=$(echo "$venv"/lib/python3*/site-packages)

find "$site" -depth -mindepth 2 -type d -name tests -exec rm -rf {} +
rm -rf "$site/pyspark/jars/connect-repl"

case "$(uname -m)" in
    x86_64) keep=linux64 ;;
    aarch64) keep=linux-aarch64 ;;
    ppc64le) keep=linux-ppc64le ;;
    s390x) keep=linux-s390x ;;
    riscv64) keep=linux-riscv64 ;;
    *) keep= ;;
esac
if [ -n "$keep" ]; then
    for jar in "$site"/pyspark/jars/rocksdbjni-*.jar; do
        [ -f "$jar" ] || continue
        drop=$(unzip -Z1 "$jar" 'librocksdbjni-*' | grep -vx "librocksdbjni-$keep.so" || true)
        # shellcheck disable=SC2086  # one argument per entry name; none contain spaces
        [ -z "$drop" ] || zip -q -d "$jar" $drop
    done
fi
rm -rf /root/.cache /tmp/*
