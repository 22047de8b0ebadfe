from django.db import migrations, models


def seed(apps, schema_editor):
    from billing.services import PLAN_FAIR_LIMITS

    Plan = apps.get_model("billing", "Plan")
    for code, limits in PLAN_FAIR_LIMITS.items():
        Plan.objects.filter(code=code).update(**limits)


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_seed_check_prices")]
    operations = [
        migrations.AddField(
            model_name="plan", name="concurrent_answers",
            field=models.PositiveSmallIntegerField(default=4, help_text="More wait their turn in the queue.",
                                                   verbose_name="chat answers generated at once"),
        ),
        migrations.AddField(
            model_name="plan", name="concurrent_checks",
            field=models.PositiveSmallIntegerField(default=4, help_text="More wait their turn in the queue.",
                                                   verbose_name="CNPJ checks run at once"),
        ),
        migrations.AddField(
            model_name="plan", name="messages_per_minute",
            field=models.PositiveSmallIntegerField(default=20, verbose_name="chat messages per minute per member"),
        ),
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
