#!/bin/bash
# What the official postgres image's entrypoint does for the settings compose and
# testcontainers use: as root, own the data folder and drop to the postgres user; on an
# empty data folder, initdb with POSTGRES_USER/POSTGRES_PASSWORD, create POSTGRES_DB and
# run /docker-entrypoint-initdb.d/*.sql|*.sh on a socket-only server; then run postgres
# listening on every address.
set -euo pipefail

case "${1:-}" in -*) set -- postgres "$@" ;; esac

if [[ ${1:-} != postgres ]]; then
    exec "$@"
fi

if [[ $(id -u) == 0 ]]; then
    mkdir -p "$PGDATA"
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
AUTH=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

init_cluster() {
    if [[ -z ${POSTGRES_PASSWORD:-} && $AUTH != trust ]]; then
        echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        echo "       (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection)" >&2
        exit 1
    fi
    echo "initialising the database cluster in $PGDATA"
    local pwfile=()
    if [[ -n ${POSTGRES_PASSWORD:-} ]]; then
        pwfile=("--pwfile=$(mktemp)")
        printf '%s\n' "$POSTGRES_PASSWORD" >"${pwfile[0]#--pwfile=}"
    fi
    initdb --username="$POSTGRES_USER" "${pwfile[@]}" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$AUTH" -D "$PGDATA" >/dev/null
    [[ ${#pwfile[@]} == 0 ]] || rm -f "${pwfile[0]#--pwfile=}"
    printf 'host all all all %s\n' "$AUTH" >>"$PGDATA/pg_hba.conf"

    # A server on the socket only, so nothing connects before the database exists.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    local psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --dbname postgres)
    if [[ $POSTGRES_DB != postgres ]]; then
        "${psql[@]}" -q -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sh) echo "running $f"; . "$f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "database cluster ready"
}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    init_cluster
fi
shift
exec postgres -c listen_addresses='*' "$@"
