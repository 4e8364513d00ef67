# Ledger transactions name a voucher only when one moves: its index keeps the rows where it is
# set (a lookup by a value, or ON DELETE's by ids, implies NOT NULL and uses it), so the
# matcher's bulk write does not add an index entry for each cash-only hold. The foreign-key
# constraint stays as it is: only the index changes (an AlterField of db_index would drop and
# re-validate the constraint).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0006_hold_programme_year_refund_actor_claims_negative'),
        ('vouchers', '0004_programme_usage_from_holds'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='transaction',
            index=models.Index(condition=models.Q(('voucher__isnull', False)), fields=['voucher'], name='transaction_voucher_idx'),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='transaction',
                    name='voucher',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='vouchers.voucher'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "ledger_transaction_voucher_id_4a5239a4"',
                    reverse_sql='CREATE INDEX "ledger_transaction_voucher_id_4a5239a4" ON "ledger_transaction" ("voucher_id")',
                ),
            ],
        ),
    ]
