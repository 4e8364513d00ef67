"""Fill the programme usage counters and each voucher hold's programme year from the holds
already made (``vouchers.models.ProgrammeUsage``): a hold counts in the programme year (its time
zone) of its reservation's creation, for its voucher part less the voucher value refunded."""

from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import migrations


def usage_from_holds(apps, schema_editor):  # type: ignore[no-untyped-def]
    Hold = apps.get_model("ledger", "Hold")
    ProgrammeUsage = apps.get_model("vouchers", "ProgrammeUsage")
    used: dict[tuple[object, int, object], Decimal] = defaultdict(Decimal)
    holds = Hold.objects.filter(voucher_part__gt=0).select_related(
        "reservation__voucher__programme"
    )
    for hold in holds:
        reservation = hold.reservation
        programme = reservation.voucher.programme
        year = reservation.created_at.astimezone(ZoneInfo(programme.time_zone)).year
        Hold.objects.filter(pk=hold.pk).update(programme_year=year)
        amount = hold.voucher_part - hold.refunded_voucher
        used[programme.pk, year, None] += amount
        used[programme.pk, year, reservation.buyer_id] += amount
    ProgrammeUsage.objects.bulk_create(
        ProgrammeUsage(programme_id=p, year=y, buyer_id=b, used=amount)
        for (p, y, b), amount in used.items()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("vouchers", "0003_programme_usage_claim_adjustments"),
        ("ledger", "0006_hold_programme_year_refund_actor_claims_negative"),
        ("marketplace", "0005_dispute"),
    ]

    operations = [migrations.RunPython(usage_from_holds, migrations.RunPython.noop)]
