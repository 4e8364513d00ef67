"""The database refuses UPDATE and DELETE of ledger entries and transactions (§5.2): a
correction is a reversing transaction. PostgreSQL only — on the embedded SQLite default
``manage.py demo --fresh`` empties the database with DELETE (PostgreSQL's flush uses TRUNCATE,
which row triggers do not see), so there the guard is the services' and the admin's read-only
access, checked by ``ledger_audit``.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger % rows are immutable (% refused); post a reversing transaction',
        TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_entry_immutable BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transaction_immutable BEFORE UPDATE OR DELETE ON ledger_transaction
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
"""

DROP = """
DROP TRIGGER IF EXISTS ledger_entry_immutable ON ledger_entry;
DROP TRIGGER IF EXISTS ledger_transaction_immutable ON ledger_transaction;
DROP FUNCTION IF EXISTS ledger_refuse_change();
"""


def _on_postgresql(sql: str):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return run


def holds_for_existing_reservations(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Give reservations made before holds were modelled their hold row."""
    Reservation = apps.get_model("marketplace", "Reservation")
    Hold = apps.get_model("ledger", "Hold")
    live = {"held", "confirmed", "active", "completed"}
    from django.utils import timezone

    now = timezone.now()
    for r in Reservation.objects.filter(hold__isnull=True).iterator():
        closed = r.status not in live
        Hold.objects.create(
            reservation=r,
            voucher_part=r.voucher_part,
            cash_paid=r.cash_part,
            status=("posted" if r.status == "settled" else "voided") if closed else "pending",
            closed_at=now if closed else None,
        )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0004_holds_refunds")]

    operations = [
        migrations.RunPython(_on_postgresql(CREATE), _on_postgresql(DROP)),
        migrations.RunPython(holds_for_existing_reservations, migrations.RunPython.noop),
    ]
