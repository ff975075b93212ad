#!/bin/bash
# Runs once, when the primary's data directory is first created (the official
# image runs /docker-entrypoint-initdb.d/* as the postgres user, against a
# server that listens on its unix socket only).
#
# The roles and database are the ones `pgrouter demo` creates, and the ones
# config/pgrouter.docker.toml logs in with.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v replication_password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE ROLE admin LOGIN PASSWORD 'admin';
CREATE DATABASE app OWNER app;
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
SQL

# "all" in pg_hba.conf's database column does not match replication
# connections: the replicas' pg_basebackup and WAL streaming need their own line.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
