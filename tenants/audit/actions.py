"""Every audit action name, with the label the audit log shows: the one place a new action is added.

Names are `<thing>.<what happened>`, dot-separated. tests/test_audit_log.py fails when code records an
action missing here (the filter's select would not offer it).
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

ACTIONS: dict[str, object] = {
    # The organization and its people
    "organization.created": _("Organization created"),
    "organization.updated": _("Organization updated"),
    "organization.mfa_requirement_changed": _("Two-factor requirement changed"),
    "membership.created": _("Member added"),
    "membership.role_changed": _("Member role changed"),
    "membership.removed": _("Member removed"),
    "membership.left": _("Member left"),
    "invitation.created": _("Invitation created"),
    "invitation.sent": _("Invitation sent"),
    "invitation.revoked": _("Invitation revoked"),
    "invitation.accepted": _("Invitation accepted"),
    "invitation.refused_no_seat": _("Invitation refused: no seat free"),
    # Sign-ins and account security (recorded in every organization the person belongs to)
    "user.login": _("Signed in"),
    "user.login_failed": _("Failed sign-in"),
    "user.mfa_enabled": _("Two-factor authentication enabled"),
    "user.mfa_disabled": _("Two-factor authentication disabled"),
    "user.password_changed": _("Password changed"),
    "user.password_reset": _("Password reset"),
    # API keys
    "api_key.created": _("API key created"),
    "api_key.revoked": _("API key revoked"),
    "api_key.used": _("API key used (first use of the day)"),
    # Integrations
    "provider_key.created": _("AI provider key added"),
    "provider_key.replaced": _("AI provider key replaced"),
    "provider_key.deleted": _("AI provider key deleted"),
    "webhook_endpoint.created": _("Webhook endpoint created"),
    "webhook_endpoint.updated": _("Webhook endpoint updated"),
    "webhook_endpoint.deleted": _("Webhook endpoint deleted"),
    "webhook_endpoint.secret_rotated": _("Webhook signing secret rotated"),
    "webhook_endpoint.disabled": _("Webhook endpoint disabled automatically"),
    "webhook_endpoint.tested": _("Webhook test event sent"),
    "webhook_endpoint.replayed": _("Webhook deliveries sent again"),
    # Content
    "thread.deleted": _("Conversation deleted"),
    "checks.target_deleted": _("Monitored company deleted"),
    "checks.settings_changed": _("Checks settings changed"),
    "checks.reports_purged": _("Old reports purged"),
    # Exports
    "checks.targets_exported": _("Companies exported"),
    "checks.report_exported": _("Report exported"),
    "checks.batch_exported": _("Bulk check results exported"),
    "billing.usage_exported": _("Usage exported"),
    "audit.exported": _("Audit log exported"),
    "audit.purged": _("Audit events past retention purged"),
    # Billing
    "billing.plan_changed": _("Plan changed"),
    "billing.plan_assigned": _("Plan assigned"),
    "billing.credits_low_threshold_set": _("Low-credits threshold set"),
    "billing.status_changed": _("Billing status changed"),
    "billing.downgraded": _("Downgraded for non-payment"),
    "credits.purchased": _("Credits purchased"),
    "credits.purchase_refused": _("Credit purchase refused"),
    "credits.adjusted": _("Credits adjusted by staff"),
    "credits.upgrade_granted": _("Upgrade credits granted"),
    "credits.overage_uncovered": _("Usage beyond the balance"),
    # Prumo staff, in the admin
    "staff.object_added": _("Staff added a record"),
    "staff.object_changed": _("Staff changed a record"),
    "staff.object_deleted": _("Staff deleted a record"),
}

GROUPS: dict[str, object] = {
    "organization": _("Organization"),
    "membership": _("Members"),
    "invitation": _("Invitations"),
    "user": _("Sign-ins and security"),
    "api_key": _("API keys"),
    "provider_key": _("AI providers"),
    "webhook_endpoint": _("Webhooks"),
    "thread": _("Chat"),
    "checks": _("Checks"),
    "billing": _("Billing"),
    "credits": _("Credits"),
    "audit": _("Audit log"),
    "staff": _("Prumo staff"),
}


def action_label(action: str) -> str:
    """The action's label; an unknown (older or newer) name shows as itself."""
    return str(ACTIONS.get(action, action))


def action_choices() -> list[tuple]:
    """The filter's select: every group (`<group>.*` matches all its actions), then its actions."""
    grouped: dict[str, list] = {}
    for action, label in ACTIONS.items():
        grouped.setdefault(action.split(".", 1)[0], []).append((action, label))
    choices: list[tuple] = [("", _("All actions"))]
    for group, actions in grouped.items():
        name = GROUPS.get(group, group)
        choices.append((name, [(f"{group}.*", _("All: %(group)s") % {"group": name}), *actions]))
    return choices


def action_valid(value: str) -> bool:
    return value in ACTIONS or (value.endswith(".*") and value[:-2] in GROUPS)
