"""Operations shared by this app's migrations (the migration loader skips ``_`` modules)."""

from django.db import migrations
from django.db.models import Field


def unindexed(
    model_name: str, name: str, field: Field, table: str, index: str, column: str
) -> migrations.SeparateDatabaseAndState:
    """Drop the index Django made for a foreign key (its state: db_index=False). The key's
    constraint stays: an AlterField of db_index would drop and re-validate it."""
    return migrations.SeparateDatabaseAndState(
        state_operations=[migrations.AlterField(model_name=model_name, name=name, field=field)],
        database_operations=[
            migrations.RunSQL(
                f'DROP INDEX IF EXISTS "{index}"',
                reverse_sql=f'CREATE INDEX "{index}" ON "{table}" ("{column}")',
            )
        ],
    )
