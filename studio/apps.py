from django.apps import AppConfig


class StudioConfig(AppConfig):
    """Generation jobs (images, speech, transcriptions, video), in each organization's schema."""

    name = "studio"
    default_auto_field = "django.db.models.BigAutoField"
