#!/bin/sh
# The periodic scheduler. Safe to run more than one: only the holder of the beat lock
# (ops/beat.py, a PostgreSQL advisory lock) sends; the others stand by and take over.
set -eu
exec celery -A marketplace beat --loglevel "${LOG_LEVEL:-INFO}" --schedule /tmp/celerybeat-schedule
