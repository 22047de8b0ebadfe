from django.apps import AppConfig


class AuditConfig(AppConfig):
    """Tenant-side audit trail: lives in each organization's schema."""

    name = "tenants.audit"
    label = "audit"
    default_auto_field = "django.db.models.BigAutoField"
