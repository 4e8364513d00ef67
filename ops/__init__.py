"""Operations: request ids and JSON logs, health and readiness probes, Prometheus metrics,
reliable Celery tasks (transient-error retries, failed-task records) and a single active beat."""
