#!/bin/sh
# Run once by the postgres image on a fresh data volume (/docker-entrypoint-initdb.d/):
# create the owner and app roles of deploy/postgres-init.sql with the passwords from the
# environment. The cluster superuser (POSTGRES_USER) is for operators only.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v dbname="$POSTGRES_DB" \
    -v owner_password="$H3LAB_DB_OWNER_PASSWORD" \
    -v app_password="$H3LAB_DB_APP_PASSWORD" \
    -f /etc/h3lab/postgres-init.sql
