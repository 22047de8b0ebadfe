"""How reports read on the checks pages and in their CSV exports: display values, Brazilian formats (CNAE,
CEP, phones), signals in the viewer's language, diff rows, alert rows, CSV rows.

Pure functions over stored values (no queries, no writes): what a report holds is shown as stored, masked
documents included; only its presentation changes here.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from django.utils import timezone, translation
from django.utils.dateparse import parse_date
from django.utils.formats import date_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.csv_cells import csv_value

from .diff import ChangeKind, FieldChange
from .models import Alert, Report, RiskLevel, Target
from .registries.normalize import SITUACOES

PROVIDER_NAMES = {"cnpjws": "publica.cnpj.ws", "brasilapi": "BrasilAPI", "minhareceita": "minha-receita",
                  "receitaws": "ReceitaWS"}
OUTCOME_LABELS = {
    "found": gettext_lazy("Found"),
    "not_found": gettext_lazy("Not found"),
    "unsupported": gettext_lazy("Not supported"),
    "rate_limited": gettext_lazy("Rate-limited"),
    "unavailable": gettext_lazy("Unavailable"),
    "error": gettext_lazy("Error"),
    "throttled": gettext_lazy("Waiting (rate limit)"),
    "circuit_open": gettext_lazy("Paused (failing)"),
}
SEVERITY_ORDER = ("BLOCKER", "HIGH", "MEDIUM", "LOW", "INFO")
DATE_KEYS = frozenset({"since", "desde", "excluido_em", "data_inicio_atividade", "data_entrada"})
ALERT_CHANGES_SHOWN = 5
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def provider_name(provider: str | None) -> str:
    return PROVIDER_NAMES.get(provider or "", provider or "")


def display(value: Any) -> str:
    """A report value as text: labels for {code, label} objects, lists joined, "—" for nothing."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return _("Yes") if value else _("No")
    if isinstance(value, list | tuple):
        return ", ".join(display(item) for item in value)
    if isinstance(value, dict):
        if value.get("label") not in (None, ""):
            code = value.get("code")
            return f"{value['label']} ({code})" if code not in (None, "") else str(value["label"])
        if "nome" in value:
            return str(value["nome"])
        return "; ".join(f"{key}: {display(item)}" for key, item in value.items() if item not in (None, ""))
    return str(value)


def cnae_format(code: str | None) -> str:
    """"6021700" → "6021-7/00" (the Receita's mask); anything else unchanged."""
    return f"{code[:4]}-{code[4]}/{code[5:]}" if code and len(code) == 7 and code.isdigit() else code or ""


def phone_format(number: str) -> str:
    if len(number) == 10:
        return f"({number[:2]}) {number[2:6]}-{number[6:]}"
    if len(number) == 11:
        return f"({number[:2]}) {number[2:7]}-{number[7:]}"
    return number


def _dated(value: Any) -> Any:
    """A copy of a report value with its ISO dates (DATE_KEYS) as `date` objects, for the `date` filter."""
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            if key in DATE_KEYS and isinstance(item, str):
                try:
                    copy[key] = parse_date(item[:10]) or item
                except ValueError:
                    copy[key] = item
            else:
                copy[key] = _dated(item)
        return copy
    if isinstance(value, list):
        return [_dated(item) for item in value]
    return value


def company_view(data: dict) -> dict:
    """A copy of the report's record for templates: dates parsed, CNAEs, CEP and phones formatted, age in years."""
    company = _dated(data)
    for cnae in [company.get("cnae_principal"), *(company.get("cnaes_secundarios") or [])]:
        if isinstance(cnae, dict):
            cnae["display"] = cnae_format(cnae.get("code"))
    address = company.get("endereco") or {}
    cep = address.get("cep") or ""
    address["cep_display"] = f"{cep[:5]}-{cep[5:]}" if len(cep) == 8 and cep.isdigit() else cep
    contact = company.get("contato") or {}
    contact["phones_display"] = [phone_format(str(number)) for number in contact.get("telefones") or []]
    opened = company.get("data_inicio_atividade")
    company["age_years"] = (timezone.localdate() - opened).days // 365 if isinstance(opened, date) else None
    return company


def signal_text(signal: dict, language: str | None = None) -> dict:
    """{"title", "explanation"} of a stored signal in `language` (the active one), else in English."""
    language = language or translation.get_language() or "en"
    texts = signal.get("texts") or {}
    return texts.get(language) or texts.get(language.split("-")[0]) or texts.get("en") or {}


def signals_view(stored: list[dict]) -> list[dict]:
    """Stored signals in the viewer's language, most severe first, with their evidence as (key, text)."""
    rows = []
    for signal in stored or []:
        text = signal_text(signal)
        rows.append({
            "code": signal.get("code", ""), "severity": str(signal.get("severity") or "INFO"),
            "title": text.get("title") or signal.get("title") or signal.get("code", ""),
            "explanation": text.get("explanation") or signal.get("explanation") or "",
            "evidence": [(key, display(value)) for key, value in (signal.get("evidence") or {}).items()],
        })
    order = {severity: rank for rank, severity in enumerate(SEVERITY_ORDER)}
    rows.sort(key=lambda row: order.get(row["severity"], len(order)))
    return rows


def attempt_rows(attempts) -> list[dict]:
    """Attempt rows (models) or a record's provenance attempts (dicts), alike."""
    rows = []
    for attempt in attempts:
        get = attempt.get if isinstance(attempt, dict) else lambda name, obj=attempt: getattr(obj, name, None)
        provider, outcome = get("provider") or "", get("outcome") or ""
        rows.append({"provider": provider, "provider_name": provider_name(provider), "outcome": outcome,
                     "outcome_label": OUTCOME_LABELS.get(outcome, outcome), "http_status": get("http_status"),
                     "latency_ms": get("latency_ms")})
    return rows


# ---------------------------------------------------------------- diff and alerts


def report_with_risk(report: Report) -> dict:
    """The record plus its level and signals (titles in the viewer's language), so a diff lists signals
    that came or went."""
    signals = [{"code": s.get("code"), "severity": s.get("severity"),
                "title": signal_text(s).get("title") or s.get("code")} for s in report.signals or []]
    return {**report.data, "risk": {"level": report.risk_level, "signals": signals}}


def _change_value(path: str, value: Any) -> str:
    if path == "situacao.code" and value is not None:
        label = SITUACOES.get(value) if isinstance(value, int) else None
        return f"{label} ({value})" if label else display(value)
    if path == "risk.level" and value in RiskLevel.values:
        return str(RiskLevel(value).label)
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date_format(parse_date(value), "SHORT_DATE_FORMAT")
        except (TypeError, ValueError):
            return value
    return display(value)


def change_rows(changes: tuple[FieldChange, ...]) -> list[dict]:
    """Diff changes as table rows: label, kind, the item a list change belongs to, old and new as text."""
    rows = []
    for change in changes:
        if change.kind == ChangeKind.CHANGED:
            old, new = _change_value(change.path, change.old), _change_value(change.path, change.new)
        elif change.kind == ChangeKind.ADDED:
            old, new = "—", change.item or display(change.new)
        else:
            old, new = change.item or display(change.old), "—"
        rows.append({"path": change.path, "label": change.label, "kind": str(change.kind),
                     "item": change.item if change.kind == ChangeKind.CHANGED else None, "old": old, "new": new})
    return rows


def alert_view(alert: Alert) -> dict:
    """An alert for the list: kinds and risk levels labelled, the first changes of its stored diff."""
    kinds = dict(Alert.Kind.choices)
    summary = alert.summary or {}
    changes = (summary.get("diff") or {}).get("changes") or []
    return {"alert": alert, "kinds": [kinds.get(kind, kind) for kind in alert.kinds],
            "risk": [RiskLevel(level).label if level in RiskLevel.values else level
                     for level in summary.get("risk") or []],
            "changes": [{"label": change.get("label"), "item": change.get("item"), "kind": change.get("kind")}
                        for change in changes[:ALERT_CHANGES_SHOWN]],
            "more": max(len(changes) - ALERT_CHANGES_SHOWN, 0)}


# ---------------------------------------------------------------- CSV


TARGET_CSV_HEADER = ["cnpj", "company_name", "label", "tags", "status", "risk_level", "last_checked_at",
                     "monitoring", "created_at"]


def target_csv_row(target: Target) -> list:
    return [target.cnpj_formatted, csv_value(target.company_name), csv_value(target.label),
            csv_value("; ".join(target.tags or [])), target.status, target.risk_level,
            target.last_checked_at.isoformat() if target.last_checked_at else "", target.schedule,
            target.created_at.isoformat()]


def _cnae_text(cnae: dict | None) -> str:
    if not cnae:
        return ""
    return " ".join(part for part in (cnae_format(cnae.get("code")), cnae.get("label") or "") if part)


def _optional(value: Any) -> str | None:
    return display(value) if value else None


def report_fields(data: dict) -> list[tuple[str, Any]]:
    """(field, value) rows of a report's company data, fields named by their schema path."""
    situacao = data.get("situacao") or {}
    address = data.get("endereco") or {}
    contact = data.get("contato") or {}
    rows: list[tuple[str, Any]] = [
        ("cnpj", data.get("cnpj_formatted") or data.get("cnpj")),
        ("razao_social", data.get("razao_social")),
        ("nome_fantasia", data.get("nome_fantasia")),
        ("is_matriz", data.get("is_matriz")),
        ("situacao", situacao.get("label")),
        ("situacao.since", situacao.get("since")),
        ("situacao.motivo", _optional(situacao.get("motivo"))),
        ("situacao_especial", _optional(data.get("situacao_especial"))),
        ("data_inicio_atividade", data.get("data_inicio_atividade")),
        ("natureza_juridica", _optional(data.get("natureza_juridica"))),
        ("porte", (data.get("porte") or {}).get("label")),
        ("capital_social", data.get("capital_social")),
        ("cnae_principal", _cnae_text(data.get("cnae_principal"))),
        ("cnaes_secundarios", "; ".join(_cnae_text(c) for c in data.get("cnaes_secundarios") or [])),
    ]
    rows += [(f"endereco.{key}", address.get(key)) for key in (
        "tipo_logradouro", "logradouro", "numero", "complemento", "bairro", "cep", "municipio", "uf", "pais")]
    rows += [("contato.telefones", "; ".join(contact.get("telefones") or [])), ("contato.email", contact.get("email"))]
    for regime in ("simples", "mei"):
        values = data.get(regime) or {}
        rows += [(f"{regime}.{key}", values.get(key)) for key in ("optante", "desde", "excluido_em")]
    return rows


def report_csv_rows(report: Report) -> list[list]:
    """Three tables separated by an empty row: field,value; the partners (documents masked as stored); the
    signals (texts in the viewer's language)."""
    data = report.data
    rows: list[list] = [["field", "value"]]
    rows += [[field, csv_value(value)] for field, value in report_fields(data)]
    rows += [[field, csv_value(value)] for field, value in (
        ("risk_level", report.risk_level), ("provider", report.provider),
        ("fetched_at", report.fetched_at.isoformat()),
        ("data_date", report.data_date.isoformat() if report.data_date else None),
        ("report_created_at", report.created_at.isoformat()))]
    rows += [[], ["partner", "type", "document_masked", "qualification", "entry_date", "age_range", "country",
                  "legal_representative"]]
    for partner in data.get("qsa") or []:
        representative = partner.get("representante_legal") or {}
        rows.append([csv_value(value) for value in (
            partner.get("nome"), partner.get("tipo"), partner.get("documento_mascarado"),
            (partner.get("qualificacao") or {}).get("label"), partner.get("data_entrada"),
            (partner.get("faixa_etaria") or {}).get("label"), partner.get("pais"),
            " ".join(filter(None, [representative.get("nome"), representative.get("documento_mascarado")])))])
    rows += [[], ["signal", "severity", "title", "explanation", "evidence"]]
    for signal in signals_view(report.signals):
        evidence = "; ".join(f"{key}={value}" for key, value in signal["evidence"])
        rows.append([signal["code"], signal["severity"], csv_value(signal["title"]),
                     csv_value(signal["explanation"]), csv_value(evidence)])
    return rows
