"""The CNPJ identifier: normalize, validate, format, generate (numeric and alphanumeric).

Canonical form: 14 characters, `[0-9A-Z]{12}[0-9]{2}`, uppercase, no mask. Since July 2026
(IN RFB 2.229/2024) the first 12 positions may hold letters; the 2 check digits stay numeric
and are computed by mod 11 over `ord(c) - 48` (digits keep their value, A=17 … Z=42), so the
same routine validates old numeric CNPJs.

Only whitespace and the mask characters `.`, `/` and `-` are removed. Anything else, including
non-ASCII look-alikes (fullwidth digits, Cyrillic letters, `É`), makes the input invalid
instead of being silently dropped or folded: the check digits cannot catch `É` for `E`
(153 ≡ 21 mod 11), so the charset must.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import StrEnum

from django.utils.translation import gettext_lazy as _

LENGTH = 14
BASE_LENGTH = 12
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
_W1 = (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_W2 = (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_MASK_CHARS = frozenset("./-")
_CHARSET = re.compile(r"[0-9A-Z]*")
_CANONICAL = re.compile(r"[0-9A-Z]{12}[0-9]{2}")


class CNPJError(StrEnum):
    FORMAT = "format"
    LENGTH = "length"
    CHECKSUM = "checksum"


MESSAGES = {
    CNPJError.FORMAT: _("Enter a CNPJ with digits and letters A–Z only (e.g. 12.ABC.345/01DE-35)."),
    CNPJError.LENGTH: _("A CNPJ has 14 characters."),
    CNPJError.CHECKSUM: _("This CNPJ's check digits are wrong: check for a typo."),
}


@dataclass(frozen=True)
class CNPJValidation:
    """The outcome of `validate`: `cnpj` is the canonical form when valid, else None."""

    raw: str
    normalized: str
    error: CNPJError | None = None

    @property
    def is_valid(self) -> bool:
        return self.error is None

    @property
    def cnpj(self) -> str | None:
        return self.normalized if self.error is None else None

    @property
    def message(self):
        """A translatable message for the user (lazy), or "" when valid."""
        return MESSAGES[self.error] if self.error else ""


class InvalidCNPJ(ValueError):
    def __init__(self, error: CNPJError):
        super().__init__(str(error))
        self.code = error
        self.message = MESSAGES[error]


def _strip(raw: str) -> str:
    return "".join(c for c in raw if not c.isspace() and c not in _MASK_CHARS)


def normalize(raw: str) -> str:
    """Whitespace and `./-` removed, uppercased; nothing else is changed (so it can still be invalid)."""
    return _strip(raw).upper()


def check_digits(base: str) -> str:
    """The two check digits of a 12-character base in the canonical charset."""
    values = [ord(c) - 48 for c in base]
    remainder = sum(v * w for v, w in zip(values, _W1, strict=True)) % 11
    first = 0 if remainder < 2 else 11 - remainder
    remainder = sum(v * w for v, w in zip([*values, first], _W2, strict=True)) % 11
    second = 0 if remainder < 2 else 11 - remainder
    return f"{first}{second}"


def validate(raw: str) -> CNPJValidation:
    stripped = _strip(raw)
    s = stripped.upper()
    # ASCII is checked before uppercasing: `upper()` turns some non-ASCII letters (ı, ſ, ß) into ASCII ones.
    if not stripped.isascii() or not _CHARSET.fullmatch(s):
        return CNPJValidation(raw, s, CNPJError.FORMAT)
    if len(s) != LENGTH:
        return CNPJValidation(raw, s, CNPJError.LENGTH)
    if not _CANONICAL.fullmatch(s) or s[:BASE_LENGTH] == "0" * BASE_LENGTH:
        return CNPJValidation(raw, s, CNPJError.FORMAT)
    if s[BASE_LENGTH:] != check_digits(s[:BASE_LENGTH]):
        return CNPJValidation(raw, s, CNPJError.CHECKSUM)
    return CNPJValidation(raw, s)


def is_valid(raw: str) -> bool:
    return validate(raw).is_valid


def clean(raw: str) -> str:
    """The canonical CNPJ, or `InvalidCNPJ` (with `.code` and a translatable `.message`)."""
    result = validate(raw)
    if result.error is not None:
        raise InvalidCNPJ(result.error)
    return result.normalized


def format_cnpj(value: str) -> str:
    """`XX.XXX.XXX/XXXX-XX` for a well-formed 14-character CNPJ; anything else is returned unchanged."""
    stripped = _strip(value)
    if not stripped.isascii() or not _CANONICAL.fullmatch(stripped.upper()):
        return value
    s = stripped.upper()
    return f"{s[:2]}.{s[2:5]}.{s[5:8]}/{s[8:12]}-{s[12:]}"


def cnpj_kind(cnpj: str) -> str:
    """"numeric" (the historical form) or "alphanumeric" (letters in the base, July 2026 on)."""
    return "numeric" if all(c in DIGITS for c in cnpj[:BASE_LENGTH]) else "alphanumeric"


def cnpj_raiz(cnpj: str) -> str:
    """The company root (first 8 characters), shared by the head office and its branches."""
    return cnpj[:8]


def matriz_cnpj(cnpj: str) -> str:
    """The conventional head office (ordem 0001) of `cnpj`'s company; the registry's matriz flag is authoritative."""
    base = cnpj[:8] + "0001"
    return base + check_digits(base)


def generate(*, alphanumeric: bool = False, rng: random.Random | None = None, raiz: str | None = None,
             ordem: str | None = None) -> str:
    """A valid canonical CNPJ (for tests and fixtures): random base unless `raiz`/`ordem` are given.

    With `alphanumeric=True` the random part draws from 0-9A-Z and contains at least one letter.
    """
    rng = rng or random.Random()
    alphabet = ALPHABET if alphanumeric else DIGITS
    while True:
        base = (raiz or "".join(rng.choice(alphabet) for _ in range(8))) + (
            ordem or "".join(rng.choice(alphabet) for _ in range(4)))
        if len(base) != BASE_LENGTH or not _CHARSET.fullmatch(base):
            raise ValueError("raiz must have 8 and ordem 4 characters in 0-9A-Z")
        if base == "0" * BASE_LENGTH:
            continue
        if alphanumeric and base.isdecimal() and raiz is None and ordem is None:
            continue
        return base + check_digits(base)
