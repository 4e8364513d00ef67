#!/bin/sh
# Web process: gunicorn serving the Django app (API, admin, console, probes, metrics).
set -eu
rm -rf "${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}" && mkdir -p "${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
exec gunicorn marketplace.wsgi:application --config /app/docker/gunicorn.conf.py
