#!/bin/sh
# A Celery worker. Usage: start-worker.sh matching|default
#   matching: the per-hub matching queues of WORKER_HUBS ("all" or hub codes, comma-separated)
#   default:  the default queue (expiry, activation, settlement, the beat's sweeps)
# Concurrency from WORKER_CONCURRENCY.
set -eu
case "${1:-default}" in
  matching) QUEUES=$(python manage.py worker_queues --hubs "${WORKER_HUBS:-all}") ;;
  default) QUEUES="${CELERY_TASK_DEFAULT_QUEUE:-default}" ;;
  *) echo "usage: $0 matching|default" >&2; exit 2 ;;
esac
exec celery -A marketplace worker \
  --queues "$QUEUES" \
  --concurrency "${WORKER_CONCURRENCY:-2}" \
  --loglevel "${LOG_LEVEL:-INFO}" \
  --hostname "${1:-default}@%h"
