from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Request ids travel with Celery messages (publish side and worker side).
        from . import celery_signals  # noqa: F401
