#!/bin/sh
# First start: initdb with the given superuser and password, password (scram) logins from
# the network, the database POSTGRES_DB, then the scripts in /docker-entrypoint-initdb.d
# (*.sh sourced, *.sql run) against a server listening on its socket only. Every start:
# run the server in the foreground.
set -eu

if [ "${1:-postgres}" != "postgres" ]; then
    exec "$@"
fi
shift || true

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export POSTGRES_USER POSTGRES_DB

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres: POSTGRES_PASSWORD is empty; refusing to create a database nobody can log in to safely" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"

    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" start >/dev/null
    if [ "$POSTGRES_DB" != "postgres" ]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh) echo "postgres: running $script"; . "$script" ;;
            *.sql) echo "postgres: running $script"
                   psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$script" ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres: database initialised in $PGDATA"
fi

exec postgres -D "$PGDATA" -c unix_socket_directories=/var/run/postgresql "$@"
