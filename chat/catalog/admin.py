from django.contrib import admin

from tenants.audit.staff import OrganizationAuditAdmin

from .models import Model, ModelAlias, ProviderKey


class AliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 0


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["id", "display_name", "provider", "tier", "context_window", "vision", "tools", "is_active"]
    list_filter = ["provider", "tier", "is_active", "vision"]
    search_fields = ["id", "display_name", "provider_model"]
    list_editable = ["is_active"]
    inlines = [AliasInline]


@admin.register(ProviderKey)
class ProviderKeyAdmin(OrganizationAuditAdmin, admin.ModelAdmin):
    """Metadata only: the encrypted key is neither shown nor editable here."""

    list_display = ["organization", "provider", "last4", "created_by", "created_at"]
    list_filter = ["provider"]
    fields = ["organization", "provider", "last4", "created_by", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False
