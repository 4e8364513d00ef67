"""The offer search generation: what tells a cached offer search page that it is stale.

The offer search (``GET /api/v1/offers/``) keeps its rendered pages in the shared cache
(Redis; ``marketplace.api.search_cache``), each tagged with the generation that was current
*before* its rows were read. Every write that can change any search answer replaces the
generation with a new random token — right away and again once its transaction commits — so
the next search reads the database again. A page read before the commit carries an older
generation and is never served after it.

What a search answer is made of (``marketplace.api.serializers.OFFER_VALUES`` and the filters):
offers (any column, any status change), the provider organisation's name, the offer's site
(code, hub, city, metro area: the ``tier`` filter), hubs (code; the ``hub`` filter) and the
accelerator catalogue (codes and aliases resolve the ``accelerator`` filter). Reservations are
not part of it (the search shows an offer's listed ``gpu_count``, not what is free).

Writers are covered three ways:

* ``save()``/``delete()`` (services, the admin, the console, factories, cascades) through the
  ``post_save``/``post_delete`` receivers registered in ``marketplace.apps``;
* queryset ``update()``, ``bulk_create()`` and ``bulk_update()`` on ``Offer``, ``Site``, ``Hub``
  and ``Accelerator`` through their managers (``SearchInvalidatingQuerySet``);
* anything else (raw SQL, ``COPY``, another model's queryset writes that change these tables, a
  bulk writer that bypasses the ORM) must call ``offer_search_changed()`` itself, inside or after
  its transaction.

A new token (not a counter) is written, so a generation key lost from Redis (eviction, a flush)
can never come back with a value an old page carries. ``OFFER_SEARCH_CACHE_SECONDS`` (the
pages' time to live, a safety net) of 0 turns the cache and these writes off; it is 0 without a
shared cache (the embedded default's per-process memory cache could not see another process's
writes).
"""

import logging
import secrets
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connections, transaction
from django.db.models import QuerySet

logger = logging.getLogger(__name__)

GENERATION_KEY = "offer-search:generation"


def cache_seconds() -> int:
    """The cached pages' time to live in seconds (``OFFER_SEARCH_CACHE_SECONDS``); 0 = off."""
    return int(getattr(settings, "OFFER_SEARCH_CACHE_SECONDS", 0))


def _bump() -> None:
    if cache_seconds() <= 0:
        return
    try:
        caches["default"].set(GENERATION_KEY, secrets.token_hex(8), timeout=None)
    except Exception:  # Redis down: the pages' TTL bounds how stale a search can be
        logger.exception("could not bump the offer search generation")


def offer_search_changed(using: str = "default") -> None:
    """Mark every cached offer search page stale: now, and again when the current transaction
    on ``using`` commits (a page read in between carries the older generation).

    Call it from any write that changes offers, their sites, hubs, providers' names or the
    accelerator catalogue and does not go through ``save()``/``delete()`` or the managers of
    ``Offer``/``Site``/``Hub``/``Accelerator`` (raw SQL, ``COPY``, a bulk writer). Cheap: one
    cache write (two inside a transaction); never raises."""
    _bump()
    if cache_seconds() > 0 and connections[using].in_atomic_block:
        transaction.on_commit(_bump, using=using)


def current_generation() -> str | None:
    """The current generation token (made if missing), or ``None`` when the cache is off or
    does not answer."""
    if cache_seconds() <= 0:
        return None
    cache = caches["default"]
    try:
        generation = cache.get(GENERATION_KEY)
        if generation is None:
            cache.add(GENERATION_KEY, secrets.token_hex(8), timeout=None)
            generation = cache.get(GENERATION_KEY)
    except Exception:
        logger.exception("could not read the offer search generation")
        return None
    return generation  # type: ignore[no-any-return]


def changed_receiver(sender: type, **kwargs: Any) -> None:
    """``post_save``/``post_delete`` receiver (``marketplace.apps``): ``offer_search_changed``
    on the database the instance was written to."""
    if kwargs.get("raw"):  # loaddata: fixtures are loaded before anything is cached
        return
    offer_search_changed(kwargs.get("using") or "default")


class SearchInvalidatingQuerySet(QuerySet):  # type: ignore[type-arg]
    """A queryset whose bulk writes (which send no model signals) mark the offer search stale:
    ``update``, ``bulk_create``, ``bulk_update``. ``delete`` sends ``post_delete`` per row
    because receivers are connected (Django then does not fast-delete)."""

    def update(self, **kwargs: Any) -> int:
        rows = super().update(**kwargs)
        if rows:
            offer_search_changed(self.db)
        return rows

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        created = super().bulk_create(objs, *args, **kwargs)
        if created:
            offer_search_changed(self.db)
        return created

    def bulk_update(self, objs: Any, fields: Any, *args: Any, **kwargs: Any) -> int:
        rows = super().bulk_update(objs, fields, *args, **kwargs)
        if rows:
            offer_search_changed(self.db)
        return rows
