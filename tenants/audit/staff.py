"""The admin's hook into the audit log: a staff member's add, change or delete of an organization's record
is also an event in that organization's log (actor: the staff user, labelled "(staff)", `after.staff`).

Mix `OrganizationAuditAdmin` into a ModelAdmin of organization records; override `audit_organization`
when the record reaches its organization by another path than `.organization`.
"""

from __future__ import annotations

from .records import staff_action_record


class OrganizationAuditAdmin:
    def audit_organization(self, obj):
        return obj.organization

    def _audit(self, request, obj, action: str, message) -> None:
        organization = self.audit_organization(obj)
        if organization is not None:
            staff_action_record(request=request, organization=organization, action=action, obj=obj,
                                message=message if isinstance(message, list | str) else str(message))

    def log_addition(self, request, obj, message):
        entry = super().log_addition(request, obj, message)
        self._audit(request, obj, "staff.object_added", message)
        return entry

    def log_change(self, request, obj, message):
        entry = super().log_change(request, obj, message)
        self._audit(request, obj, "staff.object_changed", message)
        return entry

    def log_deletions(self, request, queryset):
        # Called before the deletion: every row still has its id and organization.
        for obj in queryset:
            self._audit(request, obj, "staff.object_deleted", "")
        return super().log_deletions(request, queryset)
