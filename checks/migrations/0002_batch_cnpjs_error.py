from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("checks", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="cnpjs",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="batch",
            name="error",
            field=models.CharField(blank=True, max_length=255),
        ),
    ]
