"""Insert many rows of a model in one statement: ``COPY … FROM STDIN`` on PostgreSQL,
``bulk_create`` elsewhere (the embedded SQLite default).

``bulk_create`` builds a model instance per row, prepares every value through its field and,
with Django's client-side parameter binding on psycopg 3, sends an ``INSERT … SELECT FROM
UNNEST('{…}'::type[], …)`` whose array literals the server parses again. ``COPY`` streams the
rows instead (in PostgreSQL's binary format when psycopg knows every column's type, so the
server does not parse text either) and lets PostgreSQL insert them a page at a time; per row
it is several times cheaper on both sides. Constraints (CHECK, UNIQUE, foreign keys, still
deferred to COMMIT) and triggers apply to copied rows as to inserted ones.

Rows are plain tuples of database-ready Python values (``UUID``, ``Decimal``, aware
``datetime``, ``int``, ``str``, ``bool``, ``None``) in the order of the field names given. Every
concrete field must be given except an auto-created integer primary key (the database's
sequence numbers it): Python-side defaults (``default=``, ``auto_now_add``) are not applied, so
a field added to the model later fails loudly here instead of being written wrong.
"""

from collections.abc import Sequence
from functools import cache
from typing import Any

from django.db import connection, models
from django.db.backends.utils import CursorDebugWrapper


def rows_insert(
    model: type[models.Model], fields: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> int:
    """Insert ``rows`` (tuples of values in the order of ``fields``, attribute names such as
    ``reservation_id``) into ``model``'s table inside the caller's transaction. Returns the
    number of rows. Raises ``ValueError`` when ``fields`` leave out a concrete field (other than
    an auto-created integer primary key) and Django's ``IntegrityError`` for a violated
    constraint. Visible to ``connection.execute_wrapper`` and to ``connection.queries`` as one
    statement."""
    if not rows:
        return 0
    columns, types = _columns(model, tuple(fields))
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(
            model(**dict(zip(fields, row, strict=True))) for row in rows
        )
        return len(rows)
    table = connection.ops.quote_name(str(model._meta.db_table))
    binary = " (FORMAT BINARY)" if types is not None else ""
    sql = f"COPY {table} ({columns}) FROM STDIN{binary}"

    def copy(sql: str, params: Any, many: bool, context: dict[str, Any]) -> None:
        connection.validate_no_broken_transaction()
        with connection.wrap_database_errors, context["cursor"].cursor.copy(sql) as stream:
            if types is not None:
                stream.set_types(types)
            for row in rows:
                stream.write_row(row)

    with connection.cursor() as cursor:
        if isinstance(cursor, CursorDebugWrapper):  # DEBUG, or a query-count assertion
            with cursor.debug_sql(sql):
                cursor._execute_with_wrappers(sql, None, many=False, executor=copy)
        else:
            cursor._execute_with_wrappers(sql, None, many=False, executor=copy)
    return len(rows)


# Django column types → the names psycopg's binary COPY knows them by. A table with a column
# type not listed is copied in text format instead.
_BINARY_TYPES = {
    "uuid": "uuid",
    "timestamp with time zone": "timestamptz",
    "date": "date",
    "integer": "int4",
    "bigint": "int8",
    "smallint": "int2",
    "boolean": "bool",
    "numeric": "numeric",
    "varchar": "varchar",
    "text": "text",
}


@cache
def _columns(model: type[models.Model], fields: tuple[str, ...]) -> tuple[str, list[str] | None]:
    """The quoted column list of ``fields`` and, when every column's type has a binary COPY
    format psycopg knows, the type names for ``Copy.set_types``."""
    by_attname = {f.attname: f for f in model._meta.concrete_fields}
    unknown = [f for f in fields if f not in by_attname]
    if unknown:
        raise ValueError(f"{model.__name__} has no concrete fields {unknown}")
    missing = [
        name
        for name, f in by_attname.items()
        if name not in fields and not (f.primary_key and f.auto_created)
    ]
    if missing:
        raise ValueError(f"{model.__name__} rows must give {missing}")
    columns = ", ".join(connection.ops.quote_name(str(by_attname[f].column)) for f in fields)
    types = []
    for name in fields:
        db_type = (by_attname[name].db_type(connection) or "").split("(")[0].strip()
        if db_type not in _BINARY_TYPES:
            return columns, None
        types.append(_BINARY_TYPES[db_type])
    return columns, types
