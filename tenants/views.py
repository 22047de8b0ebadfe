from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.reauthentication import reauthentication_url, recently_reauthenticated
from billing.charts import bar_chart
from billing.selectors import entitlements_for
from chat.views_trial import trial_claim_for_request

from .api_keys import api_key_create, api_key_revoke
from .audit.services import Actor
from .dashboard import dashboard_summary
from .forms import ApiKeyForm, InvitationForm, OrganizationCreateForm, OrganizationSettingsForm, RoleForm
from .guards import org_member_required
from .models import ApiKey, Invitation, Membership, Role, invitation_token_hash
from .selectors import invitation_pending_list, member_list, organization_list_for_user, seat_usage
from .services import (
    invitation_accept,
    invitation_create,
    invitation_revoke,
    membership_remove,
    membership_role_change,
    organization_create,
    organization_mfa_require,
    organization_update,
)


def _form_errors(form, error: ValidationError) -> None:
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


@login_required
def org_list(request: HttpRequest) -> HttpResponse:
    memberships = organization_list_for_user(user=request.user)
    if not memberships:
        # A new account's first step: create its organization.
        return redirect("org_create")
    return render(request, "tenants/org_list.html", {"memberships": memberships})


@login_required
def org_create(request: HttpRequest) -> HttpResponse:
    from django_ratelimit.core import is_ratelimited

    form = OrganizationCreateForm(request.POST or None)
    # Every attempt counts: the form answers "taken", so unlimited attempts would list which addresses exist.
    if request.method == "POST" and is_ratelimited(request, group="org_create", key="user", method="POST",
                                                   rate=f"{settings.ORGANIZATION_CREATE_ATTEMPTS_PER_HOUR}/h",
                                                   increment=True):
        form.is_valid()  # errors exist only after validation: add the refusal to them
        form.add_error(None, _("Too many attempts to create an organization. Try again in an hour."))
        response = render(request, "tenants/org_create.html", {"form": form}, status=429)
        response["Retry-After"] = "3600"
        return response
    if request.method == "POST" and form.is_valid():
        try:
            org = organization_create(
                user=request.user, name=form.cleaned_data["name"], slug=form.cleaned_data["slug"],
                actor=Actor.from_request(request),
            )
        except ValidationError as error:
            _form_errors(form, error)
        else:
            messages.success(request, _("Welcome to %(name)s.") % {"name": org.name})
            trial_claim_for_request(request, org)
            return redirect("dashboard", org_slug=org.slug)
    return render(request, "tenants/org_create.html", {"form": form})


@org_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    summary = dashboard_summary(organization=request.tenant, membership=request.membership, user=request.user)
    chart = bar_chart([(f"{day.day:%Y-%m-%d}", day.credits) for day in summary.spend], height=120)
    return render(request, "tenants/dashboard.html", {"summary": summary, "chart": chart})


@org_member_required
def org_settings(request: HttpRequest) -> HttpResponse:
    can_edit = request.membership.has_role(Role.ADMIN)
    organization = request.tenant
    form = OrganizationSettingsForm(request.POST or None, can_require_mfa=request.membership.has_role(Role.OWNER),
                                    initial={"name": organization.name, "require_mfa": organization.require_mfa})
    if request.method == "POST":
        if not can_edit:
            messages.error(request, _("Only owners and admins can change the organization."))
        elif form.is_valid():
            actor = Actor.from_request(request)
            try:
                organization_mfa_require(organization=organization, actor=actor, user=request.user,
                                         required=form.cleaned_data["require_mfa"])
            except ValidationError as error:
                _form_errors(form, error)
            else:
                organization_update(organization=organization, actor=actor, name=form.cleaned_data["name"])
                messages.success(request, _("Saved."))
                return redirect("org_settings", org_slug=organization.slug)
    return render(request, "tenants/settings.html", {"form": form, "can_edit": can_edit})


@org_member_required
def members(request: HttpRequest) -> HttpResponse:
    can_manage = request.membership.has_role(Role.ADMIN)
    invite_form = InvitationForm(request.POST or None)
    if request.method == "POST":
        if not can_manage:
            messages.error(request, _("Only owners and admins can invite people."))
            return redirect("members", org_slug=request.tenant.slug)
        if invite_form.is_valid():
            role = invite_form.cleaned_data["role"]
            if role == Role.OWNER and not request.membership.has_role(Role.OWNER):
                invite_form.add_error("role", _("Only owners can invite owners."))
            else:
                try:
                    invitation_create(
                        organization=request.tenant, email=invite_form.cleaned_data["email"], role=role,
                        invited_by=request.user, actor=Actor.from_request(request),
                    )
                except ValidationError as error:
                    _form_errors(invite_form, error)
                else:
                    messages.success(request, _("Invitation sent to %(email)s.")
                                     % {"email": invite_form.cleaned_data["email"]})
                    return redirect("members", org_slug=request.tenant.slug)
    context = {
        "members": member_list(organization=request.tenant),
        "invitations": invitation_pending_list(organization=request.tenant) if can_manage else [],
        "invite_form": invite_form,
        "seats": seat_usage(organization=request.tenant) if can_manage else None,
        "can_manage": can_manage,
        "roles": Role.choices,
    }
    return render(request, "tenants/members.html", context, status=400 if invite_form.errors else 200)


def _member_or_404(request: HttpRequest, membership_id: int) -> Membership:
    return get_object_or_404(Membership.objects.select_related("user", "organization"),
                             pk=membership_id, organization=request.tenant)


@require_POST
@org_member_required(role=Role.ADMIN)
def member_role(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = _member_or_404(request, membership_id)
    form = RoleForm(request.POST)
    touches_owner = membership.role == Role.OWNER or form.data.get("role") == Role.OWNER
    if not form.is_valid():
        messages.error(request, _("Choose a valid role."))
    elif touches_owner and not request.membership.has_role(Role.OWNER):
        messages.error(request, _("Only owners can grant or change the owner role."))
    else:
        try:
            membership_role_change(membership=membership, role=form.cleaned_data["role"],
                                   actor=Actor.from_request(request))
            messages.success(request, _("%(email)s is now %(role)s.")
                             % {"email": membership.user.email, "role": membership.get_role_display()})
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
    return redirect("members", org_slug=request.tenant.slug)


@require_POST
@org_member_required(role=Role.ADMIN)
def member_remove(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = _member_or_404(request, membership_id)
    if membership.role == Role.OWNER and not request.membership.has_role(Role.OWNER):
        messages.error(request, _("Only owners can remove an owner."))
        return redirect("members", org_slug=request.tenant.slug)
    try:
        membership_remove(membership=membership, actor=Actor.from_request(request))
        messages.success(request, _("%(email)s was removed.") % {"email": membership.user.email})
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    if membership.user_id == request.user.pk:
        return redirect("org_list")
    return redirect("members", org_slug=request.tenant.slug)


@require_POST
@org_member_required(viewer_may_write=True)  # leaving is the one change a viewer makes
def member_leave(request: HttpRequest) -> HttpResponse:
    try:
        membership_remove(membership=request.membership, actor=Actor.from_request(request), action="membership.left")
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("members", org_slug=request.tenant.slug)
    messages.success(request, _("You left %(name)s.") % {"name": request.tenant.name})
    return redirect("org_list")


@require_POST
@org_member_required(role=Role.ADMIN)
def invitation_cancel(request: HttpRequest, invitation_id: int) -> HttpResponse:
    invitation = get_object_or_404(Invitation, pk=invitation_id, organization=request.tenant,
                                   status=Invitation.Status.PENDING)
    invitation_revoke(invitation=invitation, actor=Actor.from_request(request))
    messages.success(request, _("Invitation to %(email)s revoked.") % {"email": invitation.email})
    return redirect("members", org_slug=request.tenant.slug)


def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    """Public link from the invitation email. Unknown addresses sign up first, then come back."""
    invitation = (Invitation.objects.select_related("organization", "invited_by")
                  .filter(token_hash=invitation_token_hash(token)).first())
    valid = invitation is not None and invitation.status == Invitation.Status.PENDING and not invitation.is_expired
    if not valid:
        return render(request, "tenants/invitation.html", {"invalid": True}, status=404)
    if not request.user.is_authenticated:
        return render(request, "tenants/invitation.html", {
            "invitation": invitation,
            "login_url": reverse("account_login") + "?next=" + request.path,
            "signup_url": reverse("account_signup") + "?next=" + request.path,
        })
    if request.method == "POST":
        try:
            invitation_accept(token=token, user=request.user, actor=Actor.from_request(request))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
            return render(request, "tenants/invitation.html", {"invitation": invitation}, status=400)
        messages.success(request, _("You joined %(name)s.") % {"name": invitation.organization.name})
        return redirect("dashboard", org_slug=invitation.organization.slug)
    return render(request, "tenants/invitation.html", {"invitation": invitation})


@org_member_required(role=Role.ADMIN)
def api_keys(request: HttpRequest) -> HttpResponse:
    """Settings → API keys. A new key is shown once, in this response; only its hash is kept.

    Minting one needs a recent re-authentication (allauth's flow): otherwise the admin confirms
    who they are and comes back here to create it.
    """
    if request.method == "POST" and not recently_reauthenticated(request):
        messages.info(request, _("Confirm it is you to create an API key, then create it again."))
        return redirect(f"{reauthentication_url(request)}?{urlencode({'next': request.path})}")
    form = ApiKeyForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        expires_at = timezone.now() + timedelta(days=int(days)) if days else None
        new_key = api_key_create(organization=request.tenant, name=form.cleaned_data["name"],
                                 scopes=form.cleaned_data["scopes"], expires_at=expires_at, user=request.user,
                                 actor=Actor.from_request(request))
        messages.success(request, _("Key “%(name)s” created. Copy it now: it is shown only this once.")
                         % {"name": form.cleaned_data["name"]})
        form = ApiKeyForm()
    keys = ApiKey.objects.filter(organization=request.tenant).select_related("created_by")
    context = {"form": form, "keys": keys, "new_key": new_key,
               "api_access": entitlements_for(request.tenant).api_access}
    response = render(request, "tenants/api_keys.html", context)
    response["Cache-Control"] = "no-store"  # the page may hold a secret
    return response


@org_member_required(role=Role.ADMIN)
@require_POST
def api_key_revoke_view(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id, organization=request.tenant)
    api_key_revoke(key=key, actor=Actor.from_request(request))
    messages.success(request, _("Key “%(name)s” revoked: it stops working at once.") % {"name": key.name})
    return redirect("api_keys", org_slug=request.tenant.slug)
