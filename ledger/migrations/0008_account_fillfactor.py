# Ledger accounts are a small table whose balances change all the time (every hold, release,
# settlement; the matcher's bulk write updates every wallet of a batch at once). With pages
# packed full, a balance UPDATE finds no room for the new row version on its page and writes it
# elsewhere, adding an entry to each of the table's seven indexes; with free room on the page it
# is a HOT update (no index entry: the balance is in no index). PostgreSQL only; pages written
# before this keep their packing until the table is rewritten (VACUUM FULL).

from django.db import migrations


def fillfactor(value):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == 'postgresql':
            schema_editor.execute(f'ALTER TABLE ledger_account SET (fillfactor = {int(value)})')

    return run


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0007_partial_fk_indexes'),
    ]

    operations = [
        migrations.RunPython(fillfactor(50), fillfactor(100)),
    ]
