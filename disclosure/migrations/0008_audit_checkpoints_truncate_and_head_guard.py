"""SECURITY: statement-level and head-row protection for the audit log on PostgreSQL.

Migration 0002's row trigger refuses UPDATE and DELETE on entries, but a row trigger never sees
TRUNCATE, and the head row (the chain's end, :class:`disclosure.models.AuditHead`) could be set
to anything. Here:

- ``BEFORE TRUNCATE ... FOR EACH STATEMENT`` on both tables refuses TRUNCATE;
- the head may only be created at the genesis of an empty log (or matching the log's last
  entry, as a data-only restore loads it), only advance one entry at a time to an existing
  entry that chains to the previous head, and never be deleted;
- roles other than the tables' owner (the app's role of deploy/postgres-init.sql) lose UPDATE,
  DELETE and TRUNCATE on the entries and DELETE and TRUNCATE on the head.

A superuser (or the tables' owner) can still disable or drop these triggers; what detects that
is the signed checkpoints outside the database (``manage.py audit_checkpoint``, see
docs/operations.md "Audit log integrity"). SQLite has no TRUNCATE statement and no privileges;
the embedded default relies on the hash chain and the checkpoints alone.
"""

from typing import Any

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION disclosure_audit_no_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (TRUNCATE refused)', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS disclosure_audit_no_truncate ON disclosure_auditentry;
CREATE TRIGGER disclosure_audit_no_truncate
    BEFORE TRUNCATE ON disclosure_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION disclosure_audit_no_truncate();
DROP TRIGGER IF EXISTS disclosure_audithead_no_truncate ON disclosure_audithead;
CREATE TRIGGER disclosure_audithead_no_truncate
    BEFORE TRUNCATE ON disclosure_audithead
    FOR EACH STATEMENT EXECUTE FUNCTION disclosure_audit_no_truncate();

CREATE OR REPLACE FUNCTION disclosure_audithead_advance_only() RETURNS trigger AS $$
DECLARE
    last_entry disclosure_auditentry%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the audit head cannot be deleted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id <> 1 THEN
        RAISE EXCEPTION 'the audit head is the single row with id 1'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT * INTO last_entry FROM disclosure_auditentry ORDER BY id DESC LIMIT 1;
        IF NOT FOUND THEN
            IF NEW.last_id = 0 AND NEW.last_hash = repeat('0', 64) THEN
                RETURN NEW;
            END IF;
        ELSIF NEW.last_id = last_entry.id AND NEW.last_hash = last_entry.hash THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'the audit head must be created at the end of the log'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.last_id = OLD.last_id AND NEW.last_hash = OLD.last_hash THEN
        RETURN NEW;
    END IF;
    IF NEW.last_id <> OLD.last_id + 1 OR NOT EXISTS (
        SELECT 1 FROM disclosure_auditentry e
        WHERE e.id = NEW.last_id AND e.hash = NEW.last_hash AND e.prev_hash = OLD.last_hash
    ) THEN
        RAISE EXCEPTION 'the audit head only advances to the next entry (from #% to #% refused)',
            OLD.last_id, NEW.last_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS disclosure_audithead_advance_only ON disclosure_audithead;
CREATE TRIGGER disclosure_audithead_advance_only
    BEFORE INSERT OR UPDATE OR DELETE ON disclosure_audithead
    FOR EACH ROW EXECUTE FUNCTION disclosure_audithead_advance_only();

-- Roles other than the owner (the app's role, granted by default privileges, see
-- deploy/postgres-init.sql) keep only what appending needs: no UPDATE, DELETE or TRUNCATE on
-- the entries, no DELETE or TRUNCATE on the head.
DO $$
DECLARE
    grantee regrole;
BEGIN
    REVOKE UPDATE, DELETE, TRUNCATE ON disclosure_auditentry FROM PUBLIC;
    REVOKE DELETE, TRUNCATE ON disclosure_audithead FROM PUBLIC;
    FOR grantee IN
        SELECT DISTINCT a.grantee::regrole
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid IN ('disclosure_auditentry'::regclass, 'disclosure_audithead'::regclass)
          AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON disclosure_auditentry FROM %s', grantee);
        EXECUTE format('REVOKE DELETE, TRUNCATE ON disclosure_audithead FROM %s', grantee);
    END LOOP;
END
$$;
"""

DROP = """
DROP TRIGGER IF EXISTS disclosure_audithead_advance_only ON disclosure_audithead;
DROP FUNCTION IF EXISTS disclosure_audithead_advance_only();
DROP TRIGGER IF EXISTS disclosure_audithead_no_truncate ON disclosure_audithead;
DROP TRIGGER IF EXISTS disclosure_audit_no_truncate ON disclosure_auditentry;
DROP FUNCTION IF EXISTS disclosure_audit_no_truncate();
"""


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("disclosure", "0007_partner_copy_notice")]
    operations = [migrations.RunPython(forward, backward, elidable=False)]
