# A reservation's buyer is its demand's and its provider its offer's. On PostgreSQL the four
# single-column foreign keys of marketplace_reservation (demand, offer, buyer, provider) become
# two composite ones, (buyer_id, demand_id) → marketplace_demand (buyer_id, id) and
# (provider_id, offer_id) → marketplace_offer (provider_id, id): each row is checked twice
# instead of four times (the matcher's bulk write inserts thousands a cycle), and a buyer or
# provider that is not the demand's or offer's is refused, which the old keys allowed. The
# organisations' existence follows from the demand's and the offer's own keys. Both are
# NOT NULL columns, so MATCH SIMPLE checks every row. The referenced unique indexes lead with
# the organisation, so they replace the indexes of the demand's buyer and the offer's provider
# keys (dropped: one index fewer to write when a demand's status changes). The reservation's
# own indexes stay as they were.
#
# Online on PostgreSQL (not atomic): the unique indexes are built CONCURRENTLY and then
# attached as constraints; the composite keys are added NOT VALID and validated afterwards
# (VALIDATE takes a lock that lets writes go on); the old keys are dropped only then, so the
# table is never without its keys. A run cut short can be run again (IF NOT EXISTS / IF EXISTS).
#
# SQLite (the embedded default) keeps the single-column keys its table was created with: it
# cannot add a constraint to an existing table. Django's state says they are not there, so a
# later migration that rebuilds the reservation table on SQLite would leave them out.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from marketplace.migrations._ops import unindexed

TABLE = "marketplace_reservation"
SINGLE = ("demand_id", "offer_id", "buyer_id", "provider_id")
COMPOSITE = (
    ("reservation_demand_buyer_fk", "buyer_id, demand_id", "marketplace_demand", "buyer_id, id"),
    (
        "reservation_offer_provider_fk",
        "provider_id, offer_id",
        "marketplace_offer",
        "provider_id, id",
    ),
)
SINGLE_BACK = (
    ("demand_id", "marketplace_demand"),
    ("offer_id", "marketplace_offer"),
    ("buyer_id", "accounts_organisation"),
    ("provider_id", "accounts_organisation"),
)


def _single_keys(schema_editor):
    """Names of the single-column foreign keys on SINGLE's columns (Django's hashed names)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    return sorted(
        name
        for name, c in constraints.items()
        if c["foreign_key"] and len(c["columns"]) == 1 and c["columns"][0] in SINGLE
    )


UNIQUE = (
    ("marketplace_demand", "demand_buyer_id_key", "buyer_id, id", ("buyer", "id")),
    ("marketplace_offer", "offer_provider_id_key", "provider_id, id", ("provider", "id")),
)


def unique_add(apps, schema_editor):
    for table, name, columns, fields in UNIQUE:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({columns})"
            )
            schema_editor.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = '{name}') "
                f"THEN ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}; "
                "END IF; END $$"
            )
        else:
            model = apps.get_model("marketplace", table.split("_", 1)[1])
            schema_editor.add_constraint(model, models.UniqueConstraint(fields=fields, name=name))


def unique_drop(apps, schema_editor):
    for table, name, _, fields in UNIQUE:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
        else:
            model = apps.get_model("marketplace", table.split("_", 1)[1])
            schema_editor.remove_constraint(
                model, models.UniqueConstraint(fields=fields, name=name)
            )


def to_composite(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, columns, target, target_columns in COMPOSITE:
        schema_editor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {name}")
        schema_editor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} FOREIGN KEY ({columns}) "
            f"REFERENCES {target} ({target_columns}) DEFERRABLE INITIALLY DEFERRED NOT VALID"
        )
        schema_editor.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {name}")
    for name in _single_keys(schema_editor):
        schema_editor.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{name}"')


def to_single(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column, target in SINGLE_BACK:
        name = f"reservation_{column}_fk"
        schema_editor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {name}")
        schema_editor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} FOREIGN KEY ({column}) "
            f"REFERENCES {target} (id) DEFERRABLE INITIALLY DEFERRED NOT VALID"
        )
        schema_editor.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {name}")
    for name, *_ in COMPOSITE:
        schema_editor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {name}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction (see the comment above).
    atomic = False

    dependencies = [
        ('accounts', '0003_api_token'),
        ('marketplace', '0009_partial_fk_indexes'),
        ('vouchers', '0004_programme_usage_from_holds'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddConstraint(
                    model_name='demand',
                    constraint=models.UniqueConstraint(fields=('buyer', 'id'), name='demand_buyer_id_key'),
                ),
                migrations.AddConstraint(
                    model_name='offer',
                    constraint=models.UniqueConstraint(fields=('provider', 'id'), name='offer_provider_id_key'),
                ),
            ],
            database_operations=[migrations.RunPython(unique_add, unique_drop)],
        ),
        unindexed(
            'demand',
            'buyer',
            models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='demands', to='accounts.organisation'),
            'marketplace_demand',
            'marketplace_demand_buyer_id_20daa70a',
            'buyer_id',
        ),
        unindexed(
            'offer',
            'provider',
            models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='offers', to='accounts.organisation'),
            'marketplace_offer',
            'marketplace_offer_provider_id_70b9e117',
            'provider_id',
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='reservation',
                    name='buyer',
                    field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='purchases', to='accounts.organisation'),
                ),
                migrations.AlterField(
                    model_name='reservation',
                    name='demand',
                    field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='reservations', to='marketplace.demand'),
                ),
                migrations.AlterField(
                    model_name='reservation',
                    name='offer',
                    field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='reservations', to='marketplace.offer'),
                ),
                migrations.AlterField(
                    model_name='reservation',
                    name='provider',
                    field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='sales', to='accounts.organisation'),
                ),
            ],
            database_operations=[migrations.RunPython(to_composite, to_single)],
        ),
    ]
