"""SECURITY: on PostgreSQL the audit log refuses UPDATE and DELETE at the database, so not even
code that bypasses the ORM (or a mistaken admin action) can rewrite history. SQLite, the
embedded single-user default, relies on the hash chain (``manage.py verify_audit``) alone."""

from typing import Any

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION disclosure_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'disclosure_auditentry is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS disclosure_audit_append_only ON disclosure_auditentry;
CREATE TRIGGER disclosure_audit_append_only
    BEFORE UPDATE OR DELETE ON disclosure_auditentry
    FOR EACH ROW EXECUTE FUNCTION disclosure_audit_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS disclosure_audit_append_only ON disclosure_auditentry;
DROP FUNCTION IF EXISTS disclosure_audit_append_only();
"""


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("disclosure", "0001_initial")]
    operations = [migrations.RunPython(forward, backward, elidable=False)]
