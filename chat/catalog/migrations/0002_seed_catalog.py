from django.db import migrations


def seed(apps, schema_editor):
    from chat.catalog.services import catalog_seed

    catalog_seed(model_class=apps.get_model("catalog", "Model"), alias_class=apps.get_model("catalog", "ModelAlias"),
                 price_class=apps.get_model("billing", "Price"))


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial"), ("billing", "0004_meter_reports")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
