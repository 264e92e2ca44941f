#!/usr/bin/env bash
# Start (or stop) a throwaway PostgreSQL server on 127.0.0.1 for the tests.
#   eval "$(scripts/test-postgres.sh start)"   # exports ACTP_TEST_POSTGRES_URL and ACTP_TEST_PG_BIN
#   scripts/test-postgres.sh stop
# Installs Debian's postgresql package when no server binaries are found (needs root).
set -euo pipefail
PORT="${ACTP_TEST_PG_PORT:-55432}"
DATA="${ACTP_TEST_PG_DATA:-/tmp/actp-test-pg}"
USER_NAME=actp
DB_NAME=actp_test

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing postgresql (no server binaries found)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    BIN="$(find_bin)"
  else
    echo "no PostgreSQL server binaries; install the postgresql package" >&2
    exit 1
  fi
fi

# The server refuses to run as root: run it as the postgres user when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
  start)
    if ! as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      rm -rf "$DATA"
      mkdir -p "$DATA"
      [ "$(id -u)" = 0 ] && chown postgres "$DATA"
      as_owner "$BIN/initdb" -D "$DATA" -U postgres -A trust --no-sync >/dev/null
      as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
        -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DATA -c fsync=off -c synchronous_commit=off -c max_connections=200" \
        start >/dev/null
    fi
    psql_() { "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
    psql_ -c "SELECT 1 FROM pg_roles WHERE rolname='$USER_NAME'" | grep -q 1 \
      || psql_ -c "CREATE ROLE $USER_NAME LOGIN SUPERUSER PASSWORD '$USER_NAME'"
    psql_ -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'" | grep -q 1 \
      || psql_ -c "CREATE DATABASE $DB_NAME OWNER $USER_NAME"
    echo "export ACTP_TEST_POSTGRES_URL=postgresql+psycopg://$USER_NAME:$USER_NAME@127.0.0.1:$PORT/$DB_NAME"
    echo "export ACTP_TEST_PG_BIN=$BIN ACTP_TEST_PG_PORT=$PORT"
    ;;
  stop)
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
