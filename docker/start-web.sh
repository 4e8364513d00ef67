#!/bin/sh
# Web process: gunicorn serving the Django app (API, admin, console, probes, metrics).
# The gunicorn workers share their request metrics through PROMETHEUS_MULTIPROC_DIR (emptied at
# each start); only this process sets it.
set -eu
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
exec gunicorn marketplace.wsgi:application --config /app/docker/gunicorn.conf.py
