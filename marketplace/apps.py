from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace"

    def ready(self) -> None:
        from accounts.models import Organisation
        from marketplace.models import Accelerator, Hub, Offer, Site
        from marketplace.search_generation import changed_receiver

        # Every save/delete of what an offer search answer is made of marks the cached
        # search pages stale (marketplace.search_generation; bulk writes: the managers).
        for model in (Offer, Site, Hub, Accelerator, Organisation):
            for signal in (post_save, post_delete):
                signal.connect(
                    changed_receiver, sender=model, dispatch_uid=f"offer-search-{model.__name__}"
                )
        post_migrate.connect(changed_receiver, dispatch_uid="offer-search-migrate")
