from django.contrib import admin

from .audit.staff import OrganizationAuditAdmin
from .models import Domain, Invitation, Membership, Organization


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


@admin.register(Organization)
class OrganizationAdmin(OrganizationAuditAdmin, admin.ModelAdmin):
    list_display = ["name", "slug", "schema_name", "created_by", "created_at"]
    search_fields = ["name", "slug", "schema_name", "memberships__user__email"]
    list_filter = ["created_at"]
    readonly_fields = ["schema_name", "created_at"]
    inlines = [MembershipInline, DomainInline]

    def audit_organization(self, obj):
        return obj

    def has_add_permission(self, request):
        # Organizations are created through organization_create (schema provisioning, owner).
        return False


@admin.register(Domain)
class DomainAdmin(OrganizationAuditAdmin, admin.ModelAdmin):
    list_display = ["domain", "tenant", "is_primary"]
    search_fields = ["domain", "tenant__name", "tenant__slug"]
    list_filter = ["is_primary"]
    autocomplete_fields = ["tenant"]

    def audit_organization(self, obj):
        return obj.tenant


@admin.register(Membership)
class MembershipAdmin(OrganizationAuditAdmin, admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    list_filter = ["role"]
    autocomplete_fields = ["user", "organization"]
    list_select_related = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(OrganizationAuditAdmin, admin.ModelAdmin):
    list_display = ["email", "organization", "role", "status", "created_at", "expires_at"]
    search_fields = ["email", "organization__name", "organization__slug"]
    list_filter = ["status", "role"]
    readonly_fields = ["token_hash"]
    list_select_related = ["organization"]
