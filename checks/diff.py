"""What changed between two normalized company reports (research §3.1 schema v1), for monitoring alerts.

`report_diff(old, new)` compares field by field and returns a JSON-serializable `ReportDiff`: each change has a
path (`situacao.code`, `qsa[PEDRO BORGES GARCIA|10]`, `qsa[...].data_entrada`), a translatable label, a kind
(changed / added / removed) and the old and new values as the reports hold them.

Comparison rules, chosen so that a report from another provider (fallback) does not raise false alerts:
- texts compare without case, accents or repeated spaces; "" equals null; CEP and phones compare by digits;
  capital compares as a number ("400000.00" equals 400000); {code, label} objects compare by code.
- lists compare as sets keyed by identity, so order never matters: partners by name + qualification code (a new
  qualification is a removal plus an addition), secondary CNAEs by code, state registrations by UF + number,
  risk signals by code. Matched partners and registrations are also compared attribute by attribute.
- not compared: schema_version, cnpj*, idade_dias (changes daily), provenance, texts of risk signals.
"""

from __future__ import annotations

import enum
import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from .signals import RiskLevel, value_at


class ChangeKind(enum.StrEnum):
    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"


class RiskLevelChange(enum.StrEnum):
    RAISED = "raised"
    LOWERED = "lowered"


@dataclass(frozen=True)
class FieldChange:
    path: str
    label: str | Promise
    kind: ChangeKind
    old: Any
    new: Any
    # How a template names the list item (partner, CNAE, registration) the change belongs to; None for fields.
    item: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": str(self.label), "kind": str(self.kind), "old": self.old,
                "new": self.new, "item": self.item}


STATUS_PATHS = frozenset({"situacao.code", "situacao_especial"})


@dataclass(frozen=True)
class ReportDiff:
    changes: tuple[FieldChange, ...]
    risk_level_change: RiskLevelChange | None = None

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def status_changed(self) -> bool:
        """The registration status (situação cadastral) or the special situation changed."""
        return any(change.path in STATUS_PATHS for change in self.changes)

    @property
    def partners_changed(self) -> bool:
        """A partner joined, left, changed qualification or changed an attribute."""
        return any(change.path.startswith("qsa[") for change in self.changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serializable form, labels rendered in the active language (wrap in `translation.override`)."""
        return {"changes": [change.as_dict() for change in self.changes], "status_changed": self.status_changed,
                "partners_changed": self.partners_changed,
                "risk_level_change": str(self.risk_level_change) if self.risk_level_change else None}


def risk_level_change(old: str | None, new: str | None) -> RiskLevelChange | None:
    """RAISED or LOWERED when the level moved between two reports; None when equal or either is unknown.

    Raises ValueError for a level outside LOW / MEDIUM / HIGH / BLOCKER.
    """
    if old is None or new is None:
        return None
    old_rank, new_rank = RiskLevel(old).rank, RiskLevel(new).rank
    if new_rank == old_rank:
        return None
    return RiskLevelChange.RAISED if new_rank > old_rank else RiskLevelChange.LOWERED


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).upper().split())


def _canonical(value: Any) -> Any:
    """The comparable form of a report value (see the module docstring)."""
    if isinstance(value, str):
        return _fold(value) or None
    if isinstance(value, Mapping):
        if value.get("code") not in (None, ""):
            return _canonical(str(value["code"]))
        items = {key: _canonical(item) for key, item in value.items() if key != "code"}
        return items if any(item is not None for item in items.values()) else None
    if isinstance(value, list | tuple):
        items = sorted((_canonical(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
        return items or None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        return _canonical(str(value))
    return value


def _digits(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        return sorted(filter(None, (_digits(item) for item in value))) or None
    digits = "".join(c for c in str(value) if c.isdigit()) if value is not None else ""
    return digits or None


def _number(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        return _canonical(value)


def _special_label(value: Any) -> Any:
    return value.get("label") if isinstance(value, Mapping) else value


# (path, label, comparable form); paths and names as in research §3.1.
_FIELDS: tuple[tuple[str, Promise, Callable[[Any], Any]], ...] = (
    ("situacao.code", _("Registration status"), _canonical),
    ("situacao.since", _("Status date"), _canonical),
    ("situacao.motivo", _("Status reason"), _canonical),
    ("situacao_especial", _("Special situation"), lambda v: _canonical(_special_label(v))),
    ("razao_social", _("Legal name"), _canonical),
    ("nome_fantasia", _("Trade name"), _canonical),
    ("is_matriz", _("Head office"), _canonical),
    ("natureza_juridica", _("Legal nature"), _canonical),
    ("porte", _("Company size"), _canonical),
    ("capital_social", _("Share capital"), _number),
    ("data_inicio_atividade", _("Opening date"), _canonical),
    ("cnae_principal", _("Main activity (CNAE)"), lambda v: _digits(value_at(v, "code") if isinstance(v, Mapping)
                                                                    else v)),
    ("endereco.tipo_logradouro", _("Street type"), _canonical),
    ("endereco.logradouro", _("Street"), _canonical),
    ("endereco.numero", _("Street number"), _canonical),
    ("endereco.complemento", _("Address complement"), _canonical),
    ("endereco.bairro", _("District"), _canonical),
    ("endereco.cep", _("Postal code (CEP)"), _digits),
    ("endereco.municipio", _("City"), _canonical),
    ("endereco.codigo_municipio_ibge", _("City IBGE code"), _canonical),
    ("endereco.uf", _("State"), _canonical),
    ("endereco.pais", _("Country"), _canonical),
    ("contato.telefones", _("Phones"), _digits),
    ("contato.email", _("E-mail"), _canonical),
    ("simples.optante", _("Simples Nacional option"), _canonical),
    ("simples.desde", _("Simples Nacional since"), _canonical),
    ("simples.excluido_em", _("Simples Nacional exclusion"), _canonical),
    ("mei.optante", _("MEI option"), _canonical),
    ("mei.desde", _("MEI since"), _canonical),
    ("mei.excluido_em", _("MEI exclusion"), _canonical),
    ("risk.level", _("Risk level"), _canonical),
)


@dataclass(frozen=True)
class _ListSpec:
    path: str
    label: Promise
    key: Callable[[Mapping[str, Any]], str]
    item: Callable[[Mapping[str, Any]], str]
    # Attributes of a matched item that are compared too: (name, label, comparable form).
    attributes: tuple[tuple[str, Promise, Callable[[Any], Any]], ...] = ()


def _partner_key(partner: Mapping[str, Any]) -> str:
    qualificacao = partner.get("qualificacao")
    code = qualificacao.get("code") if isinstance(qualificacao, Mapping) else qualificacao
    if code in (None, "") and isinstance(qualificacao, Mapping):
        code = qualificacao.get("label")
    return f"{_fold(str(partner.get('nome') or ''))}|{_fold(str(code if code is not None else ''))}"


def _partner_item(partner: Mapping[str, Any]) -> str:
    qualificacao = partner.get("qualificacao")
    role = qualificacao
    if isinstance(qualificacao, Mapping):
        role = qualificacao.get("label") or qualificacao.get("code")
    return f"{partner.get('nome')} ({role})" if role not in (None, "") else str(partner.get("nome"))


def _cnae_code(cnae: Mapping[str, Any]) -> str:
    return _digits(cnae.get("code")) or ""


def _cnae_item(cnae: Mapping[str, Any]) -> str:
    return " ".join(str(part) for part in (cnae.get("code"), cnae.get("label")) if part not in (None, ""))


def _registration_key(registration: Mapping[str, Any]) -> str:
    return f"{_fold(str(registration.get('uf') or ''))}|{_digits(registration.get('numero')) or ''}"


_LISTS: tuple[_ListSpec, ...] = (
    _ListSpec("qsa", _("Partner"), _partner_key, _partner_item, (
        ("tipo", _("Partner type"), _canonical),
        ("documento_mascarado", _("Partner document (masked)"), _canonical),
        ("data_entrada", _("Partner entry date"), _canonical),
        ("faixa_etaria", _("Partner age range"), _canonical),
        ("pais", _("Partner country"), _canonical),
        ("representante_legal", _("Partner legal representative"), _canonical),
    )),
    _ListSpec("cnaes_secundarios", _("Secondary activity (CNAE)"), _cnae_code, _cnae_item),
    _ListSpec("inscricoes_estaduais", _("State registration"), _registration_key,
              lambda r: f"{r.get('uf')} {r.get('numero')}", (
                  ("ativa", _("State registration active"), _canonical),
              )),
    _ListSpec("risk.signals", _("Risk signal"), lambda s: str(s.get("code") or ""),
              lambda s: str(s.get("title") or s.get("code")), (
                  ("severity", _("Risk signal severity"), _canonical),
              )),
)


def _keyed(items: Any, spec: _ListSpec) -> dict[str, Mapping[str, Any]]:
    """Items by identity; repeated identities get `#2`, `#3` in a content order, so pairing is order-free."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for item in items or []:
        if isinstance(item, Mapping):
            groups.setdefault(spec.key(item), []).append(item)
    keyed = {}
    for key, group in groups.items():
        group.sort(key=lambda item: json.dumps(_canonical(item), sort_keys=True))
        for n, item in enumerate(group, start=1):
            keyed[key if n == 1 else f"{key}#{n}"] = item
    return keyed


def _list_changes(old: Mapping[str, Any], new: Mapping[str, Any], spec: _ListSpec) -> list[FieldChange]:
    old_items, new_items = _keyed(value_at(old, spec.path), spec), _keyed(value_at(new, spec.path), spec)
    changes = []
    for key in sorted(old_items.keys() - new_items.keys()):
        changes.append(FieldChange(f"{spec.path}[{key}]", spec.label, ChangeKind.REMOVED, old_items[key], None,
                                   spec.item(old_items[key])))
    for key in sorted(new_items.keys() - old_items.keys()):
        changes.append(FieldChange(f"{spec.path}[{key}]", spec.label, ChangeKind.ADDED, None, new_items[key],
                                   spec.item(new_items[key])))
    for key in sorted(old_items.keys() & new_items.keys()):
        before, after = old_items[key], new_items[key]
        for name, label, comparable in spec.attributes:
            if comparable(before.get(name)) != comparable(after.get(name)):
                changes.append(FieldChange(f"{spec.path}[{key}].{name}", label, ChangeKind.CHANGED,
                                           before.get(name), after.get(name), spec.item(after)))
    return changes


def report_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> ReportDiff:
    """Field-by-field changes from `old` to `new` (fields first, then partners, CNAEs, registrations, signals)."""
    changes = []
    for path, label, comparable in _FIELDS:
        before, after = value_at(old, path), value_at(new, path)
        if comparable(before) != comparable(after):
            changes.append(FieldChange(path, label, ChangeKind.CHANGED, before, after))
    for spec in _LISTS:
        changes.extend(_list_changes(old, new, spec))
    return ReportDiff(changes=tuple(changes),
                      risk_level_change=risk_level_change(value_at(old, "risk.level"), value_at(new, "risk.level")))
