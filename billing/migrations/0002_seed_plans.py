from django.db import migrations


def seed(apps, schema_editor):
    from billing.services import PLAN_SEEDS

    Plan = apps.get_model("billing", "Plan")
    for plan in PLAN_SEEDS:
        Plan.objects.get_or_create(code=plan["code"], defaults=plan)


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
