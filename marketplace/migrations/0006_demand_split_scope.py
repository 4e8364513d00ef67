"""Partial fills: ``Demand.split`` (``none`` | ``site`` | ``hub``) and ``min_gpus_per_part``
replace the ``single_site`` flag, which the matcher never read.

Existing rows keep their meaning: ``single_site = true`` ("all GPUs at one site", the default)
becomes ``split = none``; ``single_site = false`` (the buyer explicitly allowed several sites)
becomes ``split = hub``, the widest scope a split may take. Reversible the same way
(``none``/``site`` → true, ``hub`` → false).
"""

from django.db import migrations, models


def single_site_to_split(apps, schema_editor):  # type: ignore[no-untyped-def]
    Demand = apps.get_model("marketplace", "Demand")
    Demand.objects.filter(single_site=False).update(split="hub")


def split_to_single_site(apps, schema_editor):  # type: ignore[no-untyped-def]
    Demand = apps.get_model("marketplace", "Demand")
    Demand.objects.filter(split="hub").update(single_site=False)


class Migration(migrations.Migration):

    dependencies = [
        ("marketplace", "0005_dispute"),
    ]

    operations = [
        migrations.AddField(
            model_name="demand",
            name="split",
            field=models.CharField(
                choices=[
                    ("none", "All GPUs on one offer"),
                    ("site", "Split across offers at one site"),
                    ("hub", "Split across sites of one hub"),
                ],
                default="none",
                help_text="May the GPUs be split across offers at one site or one hub "
                "(data-parallel jobs)? Replaces the former single_site flag (true = none, "
                "false = hub).",
                max_length=4,
            ),
        ),
        migrations.AddField(
            model_name="demand",
            name="min_gpus_per_part",
            field=models.PositiveIntegerField(
                default=1,
                help_text="Fewest GPUs on any one offer when the demand is split (e.g. 8 for "
                "whole 8-GPU nodes); at most gpu_count.",
            ),
        ),
        migrations.RunPython(single_site_to_split, split_to_single_site, elidable=False),
        migrations.RemoveField(
            model_name="demand",
            name="single_site",
        ),
        migrations.AddConstraint(
            model_name="demand",
            constraint=models.CheckConstraint(
                condition=models.Q(("split__in", ["none", "site", "hub"])),
                name="demand_split_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="demand",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("min_gpus_per_part__gte", 1),
                    ("min_gpus_per_part__lte", models.F("gpu_count")),
                ),
                name="demand_min_part_valid",
            ),
        ),
    ]
