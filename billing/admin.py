from __future__ import annotations

import uuid
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from tenants.audit.services import Actor
from tenants.audit.staff import OrganizationAuditAdmin

from .ledger import InsufficientCredits, credit_adjust
from .models import BillingAccount, CreditEntry, CreditReservation, DailyUsage, Plan, Price
from .selectors import usage_top_organizations, usage_totals_per_day
from .stripe import OPERATOR_NOTE, PlanDecidedByStripe, plan_assign


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "monthly_price_cents", "monthly_credits", "requests_per_minute",
                    "seats", "api_access", "webhooks", "is_public", "sort_order"]
    list_editable = ["is_public", "sort_order"]
    search_fields = ["name", "code"]


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["kind", "key", "input_per_million", "output_per_million", "per_unit", "effective_from"]
    list_filter = ["kind"]
    search_fields = ["key"]


class AdjustForm(forms.Form):
    amount = forms.DecimalField(label=_("Credits (negative to remove)"), max_digits=20, decimal_places=6)
    reason = forms.CharField(label=_("Reason"), max_length=255)


@admin.register(BillingAccount)
class BillingAccountAdmin(OrganizationAuditAdmin, admin.ModelAdmin):
    list_display = ["organization", "plan", "status", "credits", "updated_at"]
    list_filter = ["plan", "status"]
    search_fields = ["organization__name", "organization__slug", "stripe_customer_id"]
    readonly_fields = ["organization", "credits", "updated_at"]
    list_select_related = ["organization", "plan"]

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        """A plan chosen here goes through `plan_assign`: audited, and an upgrade gets its credits now."""
        assigning = {"plan", "plan_note"} & set(form.changed_data)
        plan, note = obj.plan, obj.plan_note or OPERATOR_NOTE
        if assigning:
            obj.plan_id, obj.plan_note = form.initial["plan"], form.initial["plan_note"]
        super().save_model(request, obj, form, change)
        if assigning:
            try:
                plan_assign(organization=obj.organization, plan=plan, actor=Actor.from_request(request), note=note)
            except PlanDecidedByStripe:
                messages.error(request, _("This organization's plan follows its Stripe subscription: change it "
                                          "there."))

    def get_urls(self):
        return [path("<path:object_id>/adjust/", self.admin_site.admin_view(self.adjust_view),
                     name="billing_billingaccount_adjust"), *super().get_urls()]

    def adjust_view(self, request, object_id):
        """Staff credit adjustment with a mandatory reason (ledger entry + audit event)."""
        account = self.get_object(request, object_id)
        if account is None or not self.has_change_permission(request, account):
            return redirect("admin:billing_billingaccount_changelist")
        form = AdjustForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                credit_adjust(organization=account.organization, amount=form.cleaned_data["amount"],
                              reason=form.cleaned_data["reason"], user=request.user,
                              key=f"adjust:{request.POST.get('nonce') or uuid.uuid4()}")
            except InsufficientCredits as error:
                form.add_error("amount", _("The balance is only %(balance)s.") % {"balance": error.balance})
            else:
                messages.success(request, _("Credits adjusted."))
                return redirect(reverse("admin:billing_billingaccount_change", args=[account.pk]))
        context = {**self.admin_site.each_context(request), "account": account, "form": form,
                   "nonce": uuid.uuid4(), "opts": self.model._meta, "title": _("Adjust credits")}
        return render(request, "admin/billing/adjust.html", context)


@admin.register(CreditEntry)
class CreditEntryAdmin(admin.ModelAdmin):
    """Read-only: the ledger is append-only."""

    list_display = ["created_at", "organization", "kind", "amount", "balance_after", "idempotency_key"]
    list_filter = ["kind"]
    search_fields = ["organization__name", "organization__slug", "idempotency_key"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CreditReservation)
class CreditReservationAdmin(CreditEntryAdmin):
    list_display = ["created_at", "organization", "key", "amount", "actual", "status", "closed_at"]
    list_filter = ["status"]
    search_fields = ["organization__slug", "key"]


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    """Cross-organization usage from the rollups: top organizations and totals per day."""

    change_list_template = "admin/billing/dailyusage/change_list.html"
    list_display = ["day", "organization", "kind", "key", "user", "events", "credits"]
    list_filter = ["kind", "day"]
    search_fields = ["organization__name", "organization__slug", "key"]
    list_select_related = ["organization", "user"]
    date_hierarchy = "day"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        end = timezone.localdate()
        start = end - timedelta(days=29)
        extra_context = {
            **(extra_context or {}),
            "usage_start": start, "usage_end": end,
            "top_organizations": usage_top_organizations(start=start, end=end),
            "totals_per_day": usage_totals_per_day(start=start, end=end),
        }
        return super().changelist_view(request, extra_context=extra_context)
