#!/bin/sh
# One-shot: apply migrations and load the reference data (hubs, sites, accelerators,
# programmes; idempotent), then exit. Web, workers and beat start after it succeeds.
set -eu
python manage.py migrate --noinput
python manage.py load_reference
