-- The database roles of a deployment (compose.yaml mounts this with postgres-init.sh, which
-- runs it once, as the cluster's superuser, when the data volume is first created):
--
--   h3lab_owner  owns the database, its schema, every table and the audit triggers' functions;
--                only migrations connect as it (compose's one-shot `migrate` service).
--   h3lab_app    what web, workers and the scheduler connect as: no SUPERUSER, no CREATEDB,
--                no CREATEROLE, not the owner of anything. It may read and write rows, but not
--                TRUNCATE any table, nor disable, alter or drop the audit log's triggers (only
--                a table's owner or a superuser can), nor set session_replication_role.
--                Migration 0007 also revokes its UPDATE and DELETE on the audit entries.
--
-- psql variables: dbname, owner_password, app_password.
-- SECURITY: the superuser's and the owner's passwords belong to operators, never to the app.

\set ON_ERROR_STOP on

CREATE ROLE h3lab_owner LOGIN PASSWORD :'owner_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE h3lab_app LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

ALTER DATABASE :"dbname" OWNER TO h3lab_owner;
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO h3lab_app;

\connect :"dbname"

ALTER SCHEMA public OWNER TO h3lab_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO h3lab_app;

-- What the owner's migrations create, the app may use row by row; TRUNCATE is never granted.
ALTER DEFAULT PRIVILEGES FOR ROLE h3lab_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO h3lab_app;
ALTER DEFAULT PRIVILEGES FOR ROLE h3lab_owner IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO h3lab_app;
