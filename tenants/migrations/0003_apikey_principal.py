from django.db import migrations, models


def creatorless_keys_are_service_keys(apps, schema_editor):
    # Keys without a creator came from `manage.py create_api_key` (or outlived a deleted user):
    # they used to act as the first owner; now they act as the organization, owning no threads.
    apps.get_model("tenants", "ApiKey").objects.filter(created_by__isnull=True).update(principal="service")


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0002_apikey"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="principal",
            field=models.CharField(choices=[("member", "Member"), ("service", "Service key")], default="member",
                                   max_length=10, verbose_name="acts as"),
        ),
        migrations.RunPython(creatorless_keys_are_service_keys, migrations.RunPython.noop),
    ]
