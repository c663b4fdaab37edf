#!/usr/bin/env bash
# ensure-postgres.sh — make sure the local PostgreSQL test server is up and give this run a fresh database.
#
# Idempotent: starts the cluster only when nothing answers on $PGHOST:$PGPORT (default 127.0.0.1:5432, trust
# auth as user postgres), waits until it accepts connections, drops test databases that earlier runs left
# behind (older than six hours), creates a new database m2t_ci_<time>_<pid>, and prints its URL as the LAST line of
# stdout (progress goes to stderr), e.g.
#
#   M2T_TEST_POSTGRES_URL=$(.ci/ensure-postgres.sh | tail -n 1)
#
# The test suite connects to that database to create one template (migrated with `alembic upgrade head`) and
# one clone per test, and drops them again; the per-run database keeps runs apart and is cleaned up by the
# next run. Exit status 1 (with a message) when the server cannot be started or reached.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin:/usr/lib/postgresql/$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)/bin"

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER PGCONNECT_TIMEOUT=5

say() { echo "ensure-postgres: $*" >&2; }

if ! pg_isready -q; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    say "no PostgreSQL answers on $PGHOST:$PGPORT and no cluster is configured in /etc/postgresql"
    exit 1
  fi
  say "starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    pg_isready -q && break
    sleep 0.5
  done
  if ! pg_isready -q; then
    say "PostgreSQL $version/main did not come up on $PGHOST:$PGPORT (see /var/log/postgresql/)"
    exit 1
  fi
fi

psql_admin() { psql -X -v ON_ERROR_STOP=1 -d postgres -Atq "$@"; }

if ! psql_admin -c "SELECT 1" >/dev/null; then
  say "cannot connect as $PGUSER to $PGHOST:$PGPORT (trust auth expected for the test user)"
  exit 1
fi

# Leftovers of earlier runs: their per-run databases, and the test databases of killed pytest sessions
# (m2t_t<hex>_*). Only databases older than six hours are touched (their creation time is that of their
# PG_VERSION file), so a test session running right now is never disturbed; one still in use makes DROP fail
# and is skipped.
for db in $(psql_admin -c "SELECT datname FROM pg_database
                           WHERE (datname LIKE 'm2t\_ci\_%' OR datname LIKE 'm2t\_t%\_%')
                             AND (pg_stat_file('base/' || oid || '/PG_VERSION')).modification
                                 < now() - interval '6 hours'"); do
  psql_admin -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 && say "dropped leftover database $db" || true
done

name="m2t_ci_$(date -u +%Y%m%d%H%M%S)_$$"
psql_admin -c "CREATE DATABASE \"$name\""
say "created database $name"
echo "postgresql://$PGUSER@$PGHOST:$PGPORT/$name"
