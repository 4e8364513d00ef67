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
import os
import secrets
import threading
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


class _Store:
    """The cache as raw bytes: straight to Redis (keys made by the cache's own ``make_key``, so
    its ``KEY_PREFIX`` holds) when the default cache is Django's Redis backend, else through
    the cache API. Django's Redis backend would build a client and pickle on every call,
    several times the round trip itself.

    Each thread of each process keeps one client per server holding one connection of its own
    (``single_connection_client``): taking a connection from a pool and giving it back on
    every call costs about as much CPU as the round trip (the offer search's cache hit makes
    one). A forked process (gunicorn, Celery's prefork pool) makes its own: a connection is
    never shared across a fork. Broken connections are made again by redis-py's retries."""

    _local = threading.local()

    def __init__(self) -> None:
        self.cache = caches["default"]
        self.client = None
        conf = settings.CACHES["default"]
        if conf["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
            location = conf["LOCATION"]
            location = location if isinstance(location, str) else location[0]
            clients: dict[tuple[int, str], Any] | None = getattr(self._local, "clients", None)
            if clients is None:
                clients = self._local.clients = {}
            pid = os.getpid()
            client = clients.get((pid, location))
            if client is None:
                import redis

                for made_in in [key for key in clients if key[0] != pid]:
                    del clients[made_in]  # the parent's, before a fork (redis-py closes it
                    # only in the process that opened it)
                client = clients[(pid, location)] = redis.Redis.from_url(
                    location, single_connection_client=True
                )
            self.client = client

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        made = [self.cache.make_key(key) for key in keys]
        if self.client is not None:
            return self.client.mget(made)  # type: ignore[return-value]  # bytes: no decoding
        found = self.cache.get_many(keys)
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, timeout: int | None) -> None:
        if self.client is not None:
            self.client.set(self.cache.make_key(key), value, ex=timeout)
        else:
            self.cache.set(key, value, timeout=timeout)

    def add(self, key: str, value: bytes) -> None:
        if self.client is not None:
            self.client.set(self.cache.make_key(key), value, nx=True)
        else:
            self.cache.add(key, value, timeout=None)


def store() -> _Store:
    """The shared cache of the search pages and the generation (see ``_Store``)."""
    return _Store()


def _new_token() -> bytes:
    return secrets.token_hex(8).encode()


def _bump() -> None:
    if cache_seconds() <= 0:
        return
    try:
        store().set(GENERATION_KEY, _new_token(), timeout=None)
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


def current_generation() -> bytes | None:
    """The current generation token (made if missing), or ``None`` when the cache is off or
    does not answer."""
    if cache_seconds() <= 0:
        return None
    try:
        shared = store()
        generation = shared.get_many([GENERATION_KEY])[0]
        if generation is None:
            shared.add(GENERATION_KEY, _new_token())
            generation = shared.get_many([GENERATION_KEY])[0]
    except Exception:
        logger.exception("could not read the offer search generation")
        return None
    return generation


def changed_receiver(sender: type, **kwargs: Any) -> None:
    """``post_save``/``post_delete``/``post_migrate`` receiver (``marketplace.apps``):
    ``offer_search_changed`` on the database written to (a data migration's historical models
    send no model signals of the real ones)."""
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
