"""ORM queries compiled to SQL once, then run again with new parameter values.

Django compiles a queryset to SQL on every evaluation. For the fixed-shape queries that run on
every API request (the token lookup, with the user, organisation and home site joined; the
accelerator catalogue) that compilation costs several times more CPU than the database spends
answering them (about 1 ms against 0.1-0.3 ms on the 2-core development machine; see
``bench/bench_api.py``). A ``PreparedQuery`` builds its queryset once per thread (a Django
connection belongs to one thread), keeps the SQL and what Django's ``ModelIterable`` derives
from the compilation (column converters, field lists, ``select_related`` populators,
annotation positions), and on each call only executes the SQL and builds the instances the way
``ModelIterable`` does (for a ``values_list`` queryset: returns the converted rows). The SQL is
the ORM's own for the configured backend, so the query stays portable (PostgreSQL, the embedded
SQLite).

Only for querysets whose SQL does not depend on anything but the placeholder values: no
``Q`` built from data, no ``prefetch_related``, no ``known_related_objects``. A placeholder
must reach the SQL parameters unchanged (an exact lookup on a text column); a value given to a
query whose placeholder did not is refused with ``ValueError``.
"""

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

M = TypeVar("M", bound=Model)

PLACEHOLDER = "\x1fprepared-query-placeholder\x1f"


class _Prepared:
    """What one compilation yields, for one thread's connection."""

    def __init__(self, queryset: QuerySet) -> None:
        self.db = queryset.db
        compiler = queryset.query.get_compiler(using=self.db)
        self.sql, params = compiler.as_sql()
        self.params = list(params)
        self.slots = [i for i, value in enumerate(self.params) if value == PLACEHOLDER]
        if getattr(queryset, "_prefetch_related_lookups", ()) or getattr(
            queryset, "_known_related_objects", {}
        ):
            raise ValueError("prefetch_related and known related objects are not supported")
        select, klass_info = compiler.select, compiler.klass_info
        self.converters = list(compiler.get_converters([s[0] for s in select]).items())
        self.model = None
        if klass_info is not None:  # a queryset of instances (not ``values_list``)
            self.model = klass_info["model"]
            fields = klass_info["select_fields"]
            self.start, self.end = fields[0], fields[-1] + 1
            self.init_list = [s[0].target.attname for s in select[self.start : self.end]]
            self.populators = get_related_populators(  # type: ignore[call-arg]  # stubs: Django 6
                klass_info, select, self.db
            )
            self.annotations = list(compiler.annotation_col_map.items())


class PreparedQuery(Generic[M]):
    """A queryset built by ``build(PLACEHOLDER)``, run as ``query.all(value)`` (the instances),
    ``query.first(value)`` (the first, or ``None``) or ``query.rows(value)`` (converted column
    values), with ``value`` in place of the placeholder. ``build`` is called once per thread."""

    def __init__(self, build: Callable[[str], "QuerySet[M, Any]"]) -> None:
        self._build = build
        self._local = threading.local()

    def _prepared(self) -> _Prepared:
        prepared: _Prepared | None = getattr(self._local, "prepared", None)
        if prepared is None:
            prepared = self._local.prepared = _Prepared(self._build(PLACEHOLDER))
        return prepared

    def rows(self, value: str = PLACEHOLDER) -> list[list[Any]]:
        """The result rows, each a list of column values converted as the ORM converts them
        (for a ``values_list`` queryset: its tuples, as lists)."""
        p = self._prepared()
        if value is not PLACEHOLDER and not p.slots:
            raise ValueError("the placeholder does not reach the SQL parameters unchanged")
        params = list(p.params)
        for slot in p.slots:
            params[slot] = value
        connection = connections[p.db]
        with connection.cursor() as cursor:
            cursor.execute(p.sql, params)
            rows = [list(row) for row in cursor.fetchall()]
        for row in rows:
            for position, (converters, expression) in p.converters:
                for converter in converters:
                    row[position] = converter(row[position], expression, connection)
        return rows

    def all(self, value: str = PLACEHOLDER) -> list[M]:
        """The instances the queryset yields with ``value`` for the placeholder."""
        p = self._prepared()
        if p.model is None:
            raise TypeError("a values_list query has rows(), not instances")
        objects = []
        for row in self.rows(value):
            obj = p.model.from_db(p.db, p.init_list, row[p.start : p.end])
            for populator in p.populators:
                populator.populate(row, obj)
            for name, position in p.annotations:
                setattr(obj, name, row[position])
            objects.append(obj)
        return objects

    def first(self, value: str = PLACEHOLDER) -> M | None:
        """The first instance (build the queryset sliced ``[:1]``), or ``None``."""
        objects = self.all(value)
        return objects[0] if objects else None
