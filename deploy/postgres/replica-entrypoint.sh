#!/bin/bash
# Entry point of the replica services: on first start (empty data directory)
# the data directory is cloned from the primary with pg_basebackup -R, which
# also writes the standby settings; then the image's own entry point starts
# postgres, which finds a data directory and streams from the primary.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:=primary}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICA_NAME:=$(hostname)}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # compose starts replicas once the primary is healthy; this covers a
    # replica started on its own (docker compose up replica1).
    for _ in $(seq 1 60); do
        pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" && break
        echo "replica $REPLICA_NAME: waiting for $PRIMARY_HOST:$PRIMARY_PORT"
        sleep 1
    done
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    echo "replica $REPLICA_NAME: cloning $PRIMARY_HOST:$PRIMARY_PORT into $PGDATA"
    # No replication slot: a slot outliving a deleted replica volume would
    # keep WAL on the primary forever. The primary's wal_keep_size covers the
    # gap between the backup and the start of streaming, and short outages.
    # application_name names the replica in pg_stat_replication.
    PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
        --dbname="host=$PRIMARY_HOST port=$PRIMARY_PORT user=replicator application_name=$REPLICA_NAME" \
        --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream \
        --checkpoint=fast --progress
fi

exec docker-entrypoint.sh "$@"
