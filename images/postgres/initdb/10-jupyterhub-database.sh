#!/bin/sh
# JupyterHub keeps its own tables (and its own alembic_version) in a database of its own.
# Run once, by the postgres image's entrypoint, when the data volume is first created.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE jupyterhub OWNER \"$POSTGRES_USER\""
