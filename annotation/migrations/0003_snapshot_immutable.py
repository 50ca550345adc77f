"""Dataset snapshots are immutable: a trigger refuses any UPDATE of a snapshot row.

Training rounds cite a snapshot by id; if its file, hash or counts could change afterwards, a round's
record of what it was trained on would silently become false. Deleting an unused snapshot stays possible
(rounds that cite one PROTECT it).
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION annotation_snapshot_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'dataset snapshot % is immutable; create a new version instead', OLD.version
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER annotation_snapshot_no_update
    BEFORE UPDATE ON annotation_datasetsnapshot
    FOR EACH ROW EXECUTE FUNCTION annotation_snapshot_immutable();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS annotation_snapshot_no_update ON annotation_datasetsnapshot;
DROP FUNCTION IF EXISTS annotation_snapshot_immutable();
"""


class Migration(migrations.Migration):
    dependencies = [("annotation", "0002_claims_flags_exports")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
