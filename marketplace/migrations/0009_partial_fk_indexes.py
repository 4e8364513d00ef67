# The matcher's bulk write path adds an entry to every index of a row it inserts (and, for a
# demand whose status changes, of its new row version). Indexes it paid for in vain:
# - reservation.offer_id: the (offer, status) index leads with it;
# - demand.voucher_id, reservation.voucher_id, reservationevent.actor_id: mostly NULL, so
#   indexed only where set (a lookup by a value, or ON DELETE's by ids, implies NOT NULL and
#   uses the partial index).
# The foreign-key constraints stay as they are: only the indexes change (an AlterField of
# db_index would drop and re-validate each constraint).

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from marketplace.migrations._ops import unindexed


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_api_token'),
        ('marketplace', '0008_hub_matching_time_limit_at_least_one_second'),
        ('vouchers', '0004_programme_usage_from_holds'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='demand',
            index=models.Index(condition=models.Q(('voucher__isnull', False)), fields=['voucher'], name='demand_voucher_idx'),
        ),
        migrations.AddIndex(
            model_name='reservation',
            index=models.Index(condition=models.Q(('voucher__isnull', False)), fields=['voucher'], name='reservation_voucher_idx'),
        ),
        migrations.AddIndex(
            model_name='reservationevent',
            index=models.Index(condition=models.Q(('actor__isnull', False)), fields=['actor'], name='event_actor_idx'),
        ),
        unindexed(
            'demand',
            'voucher',
            models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='vouchers.voucher'),
            'marketplace_demand',
            'marketplace_demand_voucher_id_7e33a870',
            'voucher_id',
        ),
        unindexed(
            'reservation',
            'offer',
            models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='reservations', to='marketplace.offer'),
            'marketplace_reservation',
            'marketplace_reservation_offer_id_4cb4d73b',
            'offer_id',
        ),
        unindexed(
            'reservation',
            'voucher',
            models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='reservations', to='vouchers.voucher'),
            'marketplace_reservation',
            'marketplace_reservation_voucher_id_39d7def7',
            'voucher_id',
        ),
        unindexed(
            'reservationevent',
            'actor',
            models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
            'marketplace_reservationevent',
            'marketplace_reservationevent_actor_id_58ce3eb3',
            'actor_id',
        ),
    ]
