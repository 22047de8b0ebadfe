from django.db import migrations


def seed(apps, schema_editor):
    from billing.services import check_prices_seed

    check_prices_seed(price_class=apps.get_model("billing", "Price"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_meter_reports")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
