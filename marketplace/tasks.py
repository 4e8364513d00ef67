from celery import shared_task


@shared_task
def match_hub(hub_id: str) -> None:
    pass
