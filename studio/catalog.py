"""The Studio's models: what each one makes, the options it takes, its plan tier and how it is priced.

A job's price is billing's `Price(kind="studio", key=<model>:<variant>)` per unit (an image of a size and quality;
more kinds — speech per 1,000 characters, transcription per minute, video per second — add their variants), so
prices change in the price table like every other, and usage events copy the price they were charged at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.utils.translation import gettext as _


class InvalidOptions(ValueError):
    """The options do not fit the model (the message says which and why, for the person)."""


@dataclass(frozen=True)
class StudioModel:
    id: str  # "<provider>/<provider's model name>"
    kind: str  # studio.models.Job.Kind
    tier: str  # chat.catalog.models.Tier: plans allow tiers
    label: str
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> allowed values, the first default
    max_prompt_chars: int = 4000
    max_count: int = 1  # images per job

    @property
    def provider(self) -> str:
        return self.id.partition("/")[0]

    @property
    def provider_model(self) -> str:
        return self.id.partition("/")[2]

    def options_clean(self, given: dict) -> dict:
        """`given` checked against the model's options, defaults filled in."""
        unknown = sorted(set(given) - set(self.options) - {"n"})
        if unknown:
            raise InvalidOptions(_("Unknown option: %(names)s.") % {"names": ", ".join(unknown)})
        clean = {}
        for name, allowed in self.options.items():
            value = str(given.get(name) or allowed[0])
            if value not in allowed:
                raise InvalidOptions(_("%(name)s must be one of: %(allowed)s.")
                                     % {"name": name, "allowed": ", ".join(allowed)})
            clean[name] = value
        try:
            count = int(given.get("n") or 1)
        except (TypeError, ValueError):
            raise InvalidOptions(_("n must be a whole number.")) from None
        if not 1 <= count <= self.max_count:
            raise InvalidOptions(_("n must be between 1 and %(max)s.") % {"max": self.max_count})
        clean["n"] = count
        return clean

    def price_key(self, options: dict) -> str:
        """The price table's key for a unit made with `options` (an image: its size and quality)."""
        variant = ":".join(options[name] for name in sorted(self.options))
        return f"{self.id}:{variant}" if variant else self.id

    def units(self, options: dict) -> int:
        return int(options.get("n", 1))


IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536")

MODELS = {model.id: model for model in (
    StudioModel(id="openai/gpt-image-1", kind="image", tier="standard", label="GPT Image 1",
                options={"size": IMAGE_SIZES, "quality": ("medium", "low", "high")}, max_prompt_chars=32000,
                max_count=4),
    StudioModel(id="openai/dall-e-3", kind="image", tier="standard", label="DALL·E 3",
                options={"size": ("1024x1024", "1792x1024", "1024x1792"), "quality": ("standard", "hd")}),
)}

# Credits per unit (1 credit = 1 US cent, BILLING_CREDITS_PER_USD), about the providers' list prices; seeded by
# billing's migration 0008 (a later change is a new Price row, not an edit here).
PRICES = {
    "openai/gpt-image-1:low:1024x1024": Decimal("1.1"), "openai/gpt-image-1:low:1536x1024": Decimal("1.6"),
    "openai/gpt-image-1:low:1024x1536": Decimal("1.6"), "openai/gpt-image-1:medium:1024x1024": Decimal("4.2"),
    "openai/gpt-image-1:medium:1536x1024": Decimal("6.3"), "openai/gpt-image-1:medium:1024x1536": Decimal("6.3"),
    "openai/gpt-image-1:high:1024x1024": Decimal("16.7"), "openai/gpt-image-1:high:1536x1024": Decimal("25"),
    "openai/gpt-image-1:high:1024x1536": Decimal("25"),
    "openai/dall-e-3:standard:1024x1024": Decimal("4"), "openai/dall-e-3:standard:1792x1024": Decimal("8"),
    "openai/dall-e-3:standard:1024x1792": Decimal("8"), "openai/dall-e-3:hd:1024x1024": Decimal("8"),
    "openai/dall-e-3:hd:1792x1024": Decimal("12"), "openai/dall-e-3:hd:1024x1792": Decimal("12"),
}


def studio_model(model_id: str) -> StudioModel | None:
    return MODELS.get(model_id)
