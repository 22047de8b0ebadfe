"""The model catalog (what can be chatted with, at what price) and organizations' own provider keys.

Both live in `public`: the catalog is global, and an organization's keys are configuration
read on the request path before any schema is chosen (like its billing account).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    DEEPSEEK = "deepseek", "DeepSeek"
    OLLAMA = "ollama", "Ollama"
    DEMO = "demo", _("Built-in demo")


class Tier(models.TextChoices):
    """Plans allow tiers (`Plan.model_tiers`), never model names."""

    BASIC = "basic", _("Basic")
    STANDARD = "standard", _("Standard")
    PREMIUM = "premium", _("Premium")


class Model(models.Model):
    """One chat model: `id` is `provider/model`; its price is billing's `Price(kind="model", key=id)`."""

    id = models.CharField(_("model id"), max_length=120, primary_key=True)
    provider = models.CharField(_("provider"), max_length=20, choices=Provider.choices)
    provider_model = models.CharField(_("name at the provider"), max_length=120)
    display_name = models.CharField(_("display name"), max_length=80)
    description = models.CharField(_("description"), max_length=200, blank=True)
    tier = models.CharField(_("tier"), max_length=20, choices=Tier.choices, default=Tier.STANDARD)
    context_window = models.PositiveIntegerField(_("context window (tokens)"))
    max_output_tokens = models.PositiveIntegerField(_("max output tokens"))
    vision = models.BooleanField(_("reads images"), default=False)
    tools = models.BooleanField(_("calls tools"), default=False)
    # Model ids tried in order when this one fails before its first byte.
    fallbacks = models.JSONField(_("fallbacks"), default=list, blank=True)
    is_active = models.BooleanField(_("active"), default=True)
    sort_order = models.PositiveSmallIntegerField(default=100)

    class Meta:
        ordering = ["sort_order", "id"]

    def __str__(self) -> str:
        return self.id


class ModelAlias(models.Model):
    """Another name for a model (`gpt-4.1-mini`, `claude-sonnet`): resolved like its id."""

    alias = models.CharField(max_length=120, primary_key=True)
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="aliases")

    class Meta:
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.alias} → {self.model_id}"


class ProviderKey(models.Model):
    """An organization's own key for a provider, encrypted at rest (see chat.catalog.crypto)."""

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="provider_keys")
    provider = models.CharField(_("provider"), max_length=20, choices=Provider.choices)
    encrypted_key = models.TextField()
    last4 = models.CharField(max_length=4)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "provider"], name="provider_key_unique")]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.provider} …{self.last4}"
