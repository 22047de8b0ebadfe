"""Risk signals over a normalized company report (CHECKS-RESEARCH §3.2): deterministic and explainable.

A signal is evidence, not a verdict: it names the rule (`code`), how much it matters (`severity`), a
translatable title and explanation, and the report fields and values that triggered it (`evidence`, keyed by
path: `situacao.code`, `qsa[0].data_entrada`, `cnaes_secundarios[*].code` for a list of every item's value,
`len(qsa)` for a count; keyword-argument context under `previous.`, `matriz.`, `declaration.`,
`other_sources[<provider>].`). The report's level is the highest severity among its signals, INFO counting as LOW.

Report fields read, named as research §3.1 writes them:
    situacao.{code,label,since,motivo}, situacao_especial, data_inicio_atividade, is_matriz, matriz_cnpj,
    natureza_juridica.{code,pessoa_natural}, capital_social, cnae_principal.code, cnaes_secundarios[].code,
    endereco.{logradouro,numero,cep,municipio,uf,pais}, contato.{telefones,email},
    simples.excluido_em, mei.{optante,excluido_em},
    qsa[].{nome,tipo,qualificacao,data_entrada,faixa_etaria,pais}, provenance.{provider,source_updated_at}.
`idade_dias` is not read: ages are computed from `today`, so a stored report can be re-evaluated later.

Shapes research §3.1 leaves open, chosen here:
    situacao.motivo      {"code": int, "label": str} or null (a bare string is read as the label).
    situacao_especial    {"label": str, "since": "YYYY-MM-DD"} or null (a bare string is read as the label).
    qsa[].tipo           "PF" | "PJ" | "ESTRANGEIRO" (Receita identificador_de_socio 2 / 1 / 3).
    qsa[].pais           country name; null when the registry leaves it blank (Brazilian partners).
    qsa[].faixa_etaria, qsa[].qualificacao   {"code": int, "label": str} (a bare int is read as the code).
    dates                ISO "YYYY-MM-DD"; a datetime string is cut to its date.
A code that is null while its label is present (e.g. ReceitaWS gives texts only) falls back to the label.

What a report cannot hold comes in as keyword arguments of `signals_evaluate`: the previous report of the same
target (`SITUACAO_RECENTE` on a status change), the head office's report for a branch (`MATRIZ_NAO_ATIVA`, and
`EMPRESA_RECENTE` uses the head office's opening date), reports of the same CNPJ from other providers
(`FONTES_DIVERGENTES`), and what the tenant declared about the target (`CAPITAL_INCOMPATIVEL`, `CNAE_DIVERGENTE`).
The sanction lists (`SANCAO_CEIS/CNEP/CEPIM`) are future work in the research and not evaluated.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.functional import Promise, lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _


class Severity(enum.StrEnum):
    INFO = "INFO"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    BLOCKER = "BLOCKER"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class RiskLevel(enum.StrEnum):
    """A report's level: its highest signal severity, where INFO (context, not risk) counts as LOW."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    BLOCKER = "BLOCKER"

    @property
    def rank(self) -> int:
        return list(RiskLevel).index(self)


SITUACAO_NULA, SITUACAO_ATIVA, SITUACAO_SUSPENSA, SITUACAO_INAPTA, SITUACAO_BAIXADA = 1, 2, 3, 4, 8
SITUACAO_BY_LABEL = {"NULA": 1, "ATIVA": 2, "SUSPENSA": 3, "INAPTA": 4, "BAIXADA": 8}

NATUREZA_EMPRESARIO_INDIVIDUAL = "2135"
# LTDA, S.A. aberta and fechada, EIRELI: their capital is declared at the Junta, so 0 means "not declared".
NATUREZAS_COM_CAPITAL = frozenset({"2062", "2046", "2054", "2305"})
# LTDA and S.A. always have partners or officers in the QSA.
NATUREZAS_COM_QSA = frozenset({"2062", "2046", "2054"})

SOCIO_PJ, SOCIO_PF, SOCIO_ESTRANGEIRO = "PJ", "PF", "ESTRANGEIRO"

# Receita "Qualificações" that run the company: Administrador, Conselheiro de Administração, Diretor, Presidente,
# Sócio-Gerente, Sócio-Administrador, Empresário, Titular PF, and their "residente no exterior" variants.
QUALIFICACOES_ADMINISTRADOR = frozenset({5, 8, 10, 16, 28, 49, 50, 65, 70, 71, 72, 73, 74})
_ADMINISTRADOR_WORDS = ("ADMINISTRA", "DIRETOR", "PRESIDENTE", "GERENTE", "TITULAR", "EMPRESARIO")

# Receita "Motivos" for companies that do not exist in fact, omit their returns or front for others:
# 13/14 omissa contumaz / não localizada, 15/32 inexistente de fato, 36 comércio exterior irregular,
# 61 interposição fraudulenta, 63 omissão de declarações, 64 localização desconhecida, 73 omissão contumaz.
MOTIVOS_GRAVES_DEFAULT = (13, 14, 15, 32, 36, 61, 63, 64, 73)
# Used only when a provider gives the motivo as text without a code.
_MOTIVO_GRAVE_WORDS = ("INEXISTEN", "OMISS", "INTERPOS", "FRAUD", "LOCALIZA", "COMERCIO EXTERIOR")

# 6491-3/00 factoring, 6612-6/03 câmbio, 9200-3/99 apostas (research §3.2 examples).
CNAES_SENSIVEIS_DEFAULT = ("6491300", "6612603", "9200399")


class SignalThresholdsError(ValueError):
    """An organization's signal settings hold a bad value; `errors` maps each bad key to its message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{key}: {message}" for key, message in self.errors.items()))


def _setting_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(gettext("expected a whole number"))
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(gettext("expected a whole number")) from None


def _setting_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(gettext("expected a number"))
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(gettext("expected a number")) from None
    if not number.is_finite():
        raise ValueError(gettext("expected a number"))
    return number


def _setting_cnaes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(gettext("expected a list of CNAE codes"))
    codes = []
    for item in value:
        digits = re.sub(r"[.\-/\s]", "", item) if isinstance(item, str) else ""
        if not re.fullmatch(r"\d{2,7}", digits):
            raise ValueError(gettext("%(value)r is not a CNAE code (2 to 7 digits)") % {"value": item})
        codes.append(digits)
    return tuple(dict.fromkeys(codes))


def _setting_codes(value: Any) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(gettext("expected a list of codes"))
    return tuple(dict.fromkeys(_setting_int(item) for item in value))


def _setting(parse: Callable[[Any], Any], low: Any = None, high: Any = None, **kwargs) -> Any:
    return field(metadata={"parse": parse, "low": low, "high": high}, **kwargs)


def _range_error(spec: dataclasses.Field, value: Any) -> str | None:
    low, high = spec.metadata["low"], spec.metadata["high"]
    if low is not None and value < low:
        return gettext("must be at least %(low)s") % {"low": low}
    if high is not None and value > high:
        return gettext("must be at most %(high)s") % {"high": high}
    return None


@dataclass(frozen=True)
class SignalThresholds:
    """Per-organization thresholds (research §3.2 defaults). Build from JSON settings with `from_settings`.

    Day counts compare strictly: a company opened 179 days ago is "younger than 180 days".
    """

    situacao_recente_days: int = _setting(_setting_int, 0, default=90)
    empresa_recente_medium_days: int = _setting(_setting_int, 0, default=180)
    empresa_recente_low_days: int = _setting(_setting_int, 0, default=365)
    capital_baixo_limit: Decimal = _setting(_setting_decimal, Decimal(0), default=Decimal("1000"))
    # CAPITAL_INCOMPATIVEL fires when the declared amount exceeds this many times the share capital.
    capital_incompativel_multiple: Decimal = _setting(_setting_decimal, Decimal("0.0001"), default=Decimal("10"))
    exclusao_recente_days: int = _setting(_setting_int, 0, default=365)
    socio_entrada_recente_days: int = _setting(_setting_int, 0, default=90)
    # Receita faixa etária codes: 1 = 0–12, 2 = 13–20 ... 9 = over 80.
    socio_faixa_jovem_max: int = _setting(_setting_int, 0, 9, default=2)
    socio_faixa_idosa_min: int = _setting(_setting_int, 1, 10, default=9)
    qsa_grande_limit: int = _setting(_setting_int, 1, default=10)
    # Digits compared for CNAE_DIVERGENTE: 2 = division, 3 = group, 4 = class, 7 = subclass.
    cnae_match_digits: int = _setting(_setting_int, 2, 7, default=3)
    dados_desatualizados_days: int = _setting(_setting_int, 0, default=60)
    # CNAE codes or prefixes ("6491" matches every subclass of class 6491-3).
    cnaes_sensiveis: tuple[str, ...] = _setting(_setting_cnaes, default=CNAES_SENSIVEIS_DEFAULT)
    motivos_graves: tuple[int, ...] = _setting(_setting_codes, default=MOTIVOS_GRAVES_DEFAULT)

    def __post_init__(self) -> None:
        errors = {spec.name: error for spec in dataclasses.fields(self)
                  if (error := _range_error(spec, getattr(self, spec.name)))}
        if self.empresa_recente_medium_days > self.empresa_recente_low_days and not errors:
            errors["empresa_recente_medium_days"] = gettext("must not exceed empresa_recente_low_days")
        if errors:
            raise SignalThresholdsError(errors)

    @classmethod
    def from_settings(cls, data: Mapping[str, Any] | None) -> SignalThresholds:
        """Thresholds from an organization's JSON settings: defaults for absent keys, unknown keys ignored.

        Raises SignalThresholdsError naming every key whose value is malformed or out of range.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise SignalThresholdsError({"__all__": gettext("expected an object of settings")})
        values, errors = {}, {}
        for spec in dataclasses.fields(cls):
            if spec.name not in data:
                continue
            try:
                values[spec.name] = spec.metadata["parse"](data[spec.name])
            except ValueError as error:
                errors[spec.name] = str(error)
            else:
                if error := _range_error(spec, values[spec.name]):
                    errors[spec.name] = error
        if errors:
            raise SignalThresholdsError(errors)
        return cls(**values)

    def as_settings(self) -> dict[str, Any]:
        """JSON-serializable settings that `from_settings` reads back to equal thresholds."""
        settings = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            settings[spec.name] = str(value) if isinstance(value, Decimal) else list(value) if isinstance(
                value, tuple) else value
        return settings


@dataclass(frozen=True)
class TargetDeclaration:
    """What the tenant declared about the target: the amount at stake and the activity it expects."""

    transaction_amount: Decimal | None = None
    cnaes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signal:
    code: str
    severity: Severity
    title: str | Promise
    explanation: str | Promise
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-serializable form, texts rendered in the active language (wrap in `translation.override`)."""
        return {"code": self.code, "severity": str(self.severity), "title": str(self.title),
                "explanation": str(self.explanation), "evidence": self.evidence}


SIGNAL_TITLES: dict[str, Promise] = {
    "SITUACAO_BAIXADA": _("CNPJ closed"),
    "SITUACAO_NULA": _("CNPJ annulled"),
    "SITUACAO_INAPTA": _("CNPJ unfit (inapta)"),
    "SITUACAO_SUSPENSA": _("CNPJ suspended"),
    "MOTIVO_GRAVE": _("Serious reason for the registration status"),
    "SITUACAO_ESPECIAL": _("Special situation (bankruptcy, reorganization, liquidation)"),
    "SITUACAO_RECENTE": _("Recent change of registration status"),
    "EMPRESA_RECENTE": _("Recently opened company"),
    "ESTABELECIMENTO_FILIAL": _("Branch establishment"),
    "MATRIZ_NAO_ATIVA": _("Head office not active"),
    "CAPITAL_NAO_INFORMADO": _("Share capital not declared"),
    "CAPITAL_BAIXO": _("Low share capital"),
    "CAPITAL_INCOMPATIVEL": _("Share capital incompatible with the declared amount"),
    "PESSOA_NATURAL": _("Sole proprietor (natural person)"),
    "MEI_EXCLUIDO": _("Recently excluded from MEI"),
    "SIMPLES_EXCLUIDO": _("Recently excluded from Simples Nacional"),
    "SEM_SOCIOS": _("No partners in the registry"),
    "SOCIO_PJ": _("Partner is a company"),
    "SOCIO_ESTRANGEIRO": _("Foreign partner"),
    "SOCIO_ENTRADA_RECENTE": _("Partner joined recently"),
    "SOCIO_FAIXA_ETARIA_ATIPICA": _("Partner in an atypical age range"),
    "QSA_UNICO": _("Single partner"),
    "QSA_GRANDE": _("Many partners"),
    "CNAE_DIVERGENTE": _("Activity differs from the declared one"),
    "CNAE_SENSIVEL": _("Sensitive activity"),
    "ENDERECO_INCOMPLETO": _("Incomplete address"),
    "CONTATO_INVALIDO": _("Invalid contact details"),
    "DADOS_DESATUALIZADOS": _("Registry data may be out of date"),
    "FONTES_DIVERGENTES": _("Sources disagree on the registration status"),
}
SIGNAL_CODES: tuple[str, ...] = tuple(SIGNAL_TITLES)

_interpolate = lazy(lambda template, params: str(template) % params, str)


def _signal(code: str, severity: Severity, explanation: Promise, evidence: dict[str, Any],
            **params: Any) -> Signal:
    text = _interpolate(explanation, params) if params else explanation
    return Signal(code=code, severity=severity, title=SIGNAL_TITLES[code], explanation=text,
                  evidence=_jsonable(evidence))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Decimal | date):
        return str(value) if isinstance(value, Decimal) else value.isoformat()
    return value


def value_at(data: Any, path: str) -> Any:
    """The value at a dotted `path` of nested mappings (None where the path breaks off)."""
    for part in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def _fold(text: Any) -> str:
    """Uppercase, accents removed, whitespace collapsed: how registry texts are compared."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).upper().split())


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _date(value: Any, path: str) -> date | None:
    if _blank(value):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"report field {path} is not an ISO date: {value!r}") from None


def _decimal(value: Any, path: str) -> Decimal | None:
    if _blank(value):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"report field {path} is not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"report field {path} is not a number: {value!r}")
    return number


def _code(value: Any) -> Any:
    """The `code` of a {code, label} object (a bare value is its own code)."""
    return value.get("code") if isinstance(value, Mapping) else value


def _label(value: Any) -> str | None:
    label = value.get("label") if isinstance(value, Mapping) else value
    return None if _blank(label) else str(label)


def _int_code(value: Any) -> int | None:
    code = _code(value)
    if _blank(code):
        return None
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def _digits(value: Any) -> str:
    return re.sub(r"\D", "", str(value)) if value is not None else ""


def _situacao_code(report: Mapping[str, Any]) -> int | None:
    situacao = report.get("situacao")
    code = _int_code(situacao)
    if code is None and (label := _label(situacao)):
        code = SITUACAO_BY_LABEL.get(_fold(label))
    return code


def _natureza_code(report: Mapping[str, Any]) -> str | None:
    code = _code(report.get("natureza_juridica"))
    return None if _blank(code) else _digits(code) or None


def _pessoa_natural(report: Mapping[str, Any]) -> bool:
    natureza = _natureza_code(report)
    return bool(value_at(report, "natureza_juridica.pessoa_natural")) or natureza == NATUREZA_EMPRESARIO_INDIVIDUAL or (
        natureza is not None and natureza.startswith("4"))


def _partners(report: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    return [(index, partner) for index, partner in enumerate(report.get("qsa") or [])
            if isinstance(partner, Mapping)]


def _cnae_codes(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(evidence path, 7-digit code) of the main and secondary activities."""
    codes = []
    if main := _digits(_code(report.get("cnae_principal"))):
        codes.append(("cnae_principal.code", main))
    for index, cnae in enumerate(report.get("cnaes_secundarios") or []):
        if code := _digits(_code(cnae)):
            codes.append((f"cnaes_secundarios[{index}].code", code))
    return codes


@dataclass(frozen=True)
class _Inputs:
    thresholds: SignalThresholds
    today: date
    previous: Mapping[str, Any] | None
    matriz: Mapping[str, Any] | None
    other_sources: Sequence[Mapping[str, Any]]
    declaration: TargetDeclaration | None

    def days_since(self, day: date) -> int:
        return (self.today - day).days


_SITUACAO_SIGNALS = {
    SITUACAO_BAIXADA: ("SITUACAO_BAIXADA", Severity.BLOCKER, _(
        "The Receita Federal closed this CNPJ (baixada): the company no longer exists and cannot sign contracts "
        "or issue invoices.")),
    SITUACAO_NULA: ("SITUACAO_NULA", Severity.BLOCKER, _(
        "The Receita Federal annulled this CNPJ (nula): the registration is void.")),
    SITUACAO_INAPTA: ("SITUACAO_INAPTA", Severity.HIGH, _(
        "The Receita Federal declared this CNPJ unfit (inapta), usually for missing tax returns or because the "
        "company could not be found at its address.")),
    SITUACAO_SUSPENSA: ("SITUACAO_SUSPENSA", Severity.HIGH, _(
        "The Receita Federal suspended this CNPJ: the company cannot operate until the suspension is lifted.")),
}


def _rule_situacao(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    code = _situacao_code(report)
    if code in _SITUACAO_SIGNALS:
        signal_code, severity, explanation = _SITUACAO_SIGNALS[code]
        evidence = {"situacao.code": code, "situacao.label": value_at(report, "situacao.label")}
        if since := value_at(report, "situacao.since"):
            evidence["situacao.since"] = since
        yield _signal(signal_code, severity, explanation, evidence)


def _rule_motivo(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    motivo = value_at(report, "situacao.motivo")
    code, label = _int_code(motivo), _label(motivo)
    if code is not None:
        grave = code in inputs.thresholds.motivos_graves
    else:
        grave = label is not None and any(word in _fold(label) for word in _MOTIVO_GRAVE_WORDS)
    if grave:
        evidence = {"situacao.motivo.code": code, "situacao.motivo.label": label}
        if not isinstance(motivo, Mapping):
            evidence = {"situacao.motivo": motivo}
        yield _signal("MOTIVO_GRAVE", Severity.HIGH, _(
            "The reason recorded for the registration status (%(motivo)s) is one the Receita Federal uses for "
            "companies that do not exist in fact, omit their tax returns or hide their real owners."),
            evidence, motivo=label or code)


def _rule_situacao_especial(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    especial = report.get("situacao_especial")
    label = _label(especial)
    if label is None:
        return
    if isinstance(especial, Mapping):
        evidence = {"situacao_especial.label": label}
        if especial.get("since"):
            evidence["situacao_especial.since"] = especial["since"]
    else:
        evidence = {"situacao_especial": especial}
    # Judicial or extrajudicial reorganization keeps the company running; bankruptcy, liquidation and
    # intervention are how a company ends.
    severity = Severity.MEDIUM if "RECUPERACAO" in _fold(label) else Severity.HIGH
    yield _signal("SITUACAO_ESPECIAL", severity, _(
        "The registry records a special situation for this company: %(situacao)s."), evidence, situacao=label)


def _rule_situacao_recente(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    code = _situacao_code(report)
    previous_code = _situacao_code(inputs.previous) if inputs.previous is not None else None
    if code is not None and previous_code is not None and code != previous_code:
        yield _signal("SITUACAO_RECENTE", Severity.MEDIUM, _(
            "The registration status changed from %(old)s to %(new)s since the previous check."),
            {"situacao.code": code, "situacao.label": value_at(report, "situacao.label"),
             "previous.situacao.code": previous_code,
             "previous.situacao.label": value_at(inputs.previous, "situacao.label")},
            old=value_at(inputs.previous, "situacao.label") or previous_code,
            new=value_at(report, "situacao.label") or code)
        return
    since = _date(value_at(report, "situacao.since"), "situacao.since")
    limit = inputs.thresholds.situacao_recente_days
    if code not in (None, SITUACAO_ATIVA) and since is not None and inputs.days_since(since) < limit:
        yield _signal("SITUACAO_RECENTE", Severity.MEDIUM, _(
            "The company left the active status %(days)s days ago (signal below %(limit)s days)."),
            {"situacao.code": code, "situacao.since": value_at(report, "situacao.since")},
            days=inputs.days_since(since), limit=limit)


def _company_start(report: Mapping[str, Any], inputs: _Inputs) -> tuple[str, date] | None:
    """(evidence path, date) the company (not this establishment) started, when known."""
    if report.get("is_matriz") is False:
        if inputs.matriz is None:
            return None
        start = _date(inputs.matriz.get("data_inicio_atividade"), "matriz.data_inicio_atividade")
        return ("matriz.data_inicio_atividade", start) if start else None
    start = _date(report.get("data_inicio_atividade"), "data_inicio_atividade")
    return ("data_inicio_atividade", start) if start else None


def _rule_empresa_recente(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    start = _company_start(report, inputs)
    if start is None:
        return
    path, day = start
    days, thresholds = inputs.days_since(day), inputs.thresholds
    if days < thresholds.empresa_recente_medium_days:
        severity, limit = Severity.MEDIUM, thresholds.empresa_recente_medium_days
    elif days < thresholds.empresa_recente_low_days:
        severity, limit = Severity.LOW, thresholds.empresa_recente_low_days
    else:
        return
    yield _signal("EMPRESA_RECENTE", severity, _(
        "The company started its activity %(days)s days ago (signal below %(limit)s days): recently opened "
        "companies are a classic shell-company indicator."), {path: day}, days=days, limit=limit)


def _rule_filial(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    if report.get("is_matriz") is not False:
        return
    yield _signal("ESTABELECIMENTO_FILIAL", Severity.INFO, _(
        "This CNPJ is a branch: its status can differ from the company's, so check the head office too."),
        {"is_matriz": False, "matriz_cnpj": report.get("matriz_cnpj")})
    if inputs.matriz is None:
        return
    matriz_code = _situacao_code(inputs.matriz)
    if matriz_code is not None and matriz_code != SITUACAO_ATIVA:
        label = value_at(inputs.matriz, "situacao.label")
        yield _signal("MATRIZ_NAO_ATIVA", Severity.HIGH, _(
            "The head office of this branch is not active (%(situacao)s)."),
            {"matriz.cnpj": inputs.matriz.get("cnpj"), "matriz.situacao.code": matriz_code,
             "matriz.situacao.label": label}, situacao=label or matriz_code)


def _rule_capital(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    natureza = _natureza_code(report)
    capital = _decimal(report.get("capital_social"), "capital_social")
    evidence = {"natureza_juridica.code": natureza, "capital_social": report.get("capital_social")}
    if natureza in NATUREZAS_COM_CAPITAL and not capital:
        yield _signal("CAPITAL_NAO_INFORMADO", Severity.MEDIUM, _(
            "This legal nature declares its share capital, but the registry shows none: 0 means not declared."),
            evidence)
        return
    limit = inputs.thresholds.capital_baixo_limit
    business = natureza is not None and natureza.startswith("2")
    if (business and not _pessoa_natural(report) and value_at(report, "mei.optante") is not True
            and capital and capital < limit):
        yield _signal("CAPITAL_BAIXO", Severity.LOW, _(
            "The share capital (R$ %(capital)s) is below R$ %(limit)s."), evidence, capital=capital, limit=limit)


def _rule_capital_incompativel(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    amount = inputs.declaration.transaction_amount if inputs.declaration else None
    capital = _decimal(report.get("capital_social"), "capital_social")
    multiple = inputs.thresholds.capital_incompativel_multiple
    if amount is None or not capital or capital <= 0 or amount <= capital * multiple:
        return
    yield _signal("CAPITAL_INCOMPATIVEL", Severity.MEDIUM, _(
        "The declared amount (R$ %(amount)s) is more than %(multiple)s times the share capital "
        "(R$ %(capital)s): a possible incompatibility with the company's financial capacity."),
        {"capital_social": report.get("capital_social"), "declaration.transaction_amount": amount},
        amount=amount, multiple=multiple, capital=capital)


def _rule_pessoa_natural(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    natureza = _natureza_code(report)
    evidence: dict[str, Any] = {}
    if _pessoa_natural(report):
        evidence["natureza_juridica.code"] = natureza
        if value_at(report, "natureza_juridica.pessoa_natural") is not None:
            evidence["natureza_juridica.pessoa_natural"] = value_at(report, "natureza_juridica.pessoa_natural")
    if value_at(report, "mei.optante") is True:
        evidence["mei.optante"] = True
    if evidence:
        yield _signal("PESSOA_NATURAL", Severity.INFO, _(
            "The company is a natural person's business: personal data rules apply and the owner's liability "
            "is not limited."), evidence)


def _rule_exclusao(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    limit = inputs.thresholds.exclusao_recente_days
    for regime, code in (("mei", "MEI_EXCLUIDO"), ("simples", "SIMPLES_EXCLUIDO")):
        path = f"{regime}.excluido_em"
        excluded = _date(value_at(report, path), path)
        # A future date is a scheduled exclusion, which matters at least as much as a past one.
        if excluded is not None and inputs.days_since(excluded) < limit:
            yield _signal(code, Severity.LOW, _(
                "The company was excluded from this tax regime on %(day)s (signal within %(limit)s days)."),
                {path: value_at(report, path)}, day=excluded.isoformat(), limit=limit)


def _rule_sem_socios(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    natureza, qsa = _natureza_code(report), report.get("qsa")
    if natureza in NATUREZAS_COM_QSA and isinstance(qsa, list) and not qsa:
        yield _signal("SEM_SOCIOS", Severity.MEDIUM, _(
            "The registry lists no partners or officers for a legal nature that must have them: the "
            "beneficial owner cannot be identified from the registry."),
            {"natureza_juridica.code": natureza, "qsa": []})


def _is_foreign(partner: Mapping[str, Any]) -> bool:
    pais = partner.get("pais")
    return partner.get("tipo") == SOCIO_ESTRANGEIRO or (
        not _blank(pais) and _fold(_label(pais)) not in {"BRASIL", "BRAZIL"})


def _rule_socios(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    partners = _partners(report)
    companies = {f"qsa[{i}].nome": p.get("nome") for i, p in partners if p.get("tipo") == SOCIO_PJ}
    if companies:
        companies.update({f"qsa[{i}].tipo": SOCIO_PJ for i, p in partners if p.get("tipo") == SOCIO_PJ})
        yield _signal("SOCIO_PJ", Severity.INFO, _(
            "A partner is a company: resolve the ownership chain to find the beneficial owner."),
            dict(sorted(companies.items())))
    foreign = {}
    for index, partner in partners:
        if _is_foreign(partner):
            foreign.update({f"qsa[{index}].nome": partner.get("nome"), f"qsa[{index}].tipo": partner.get("tipo"),
                            f"qsa[{index}].pais": partner.get("pais")})
    if foreign:
        yield _signal("SOCIO_ESTRANGEIRO", Severity.MEDIUM, _(
            "A partner is a foreign person or company."), foreign)


def _rule_socio_entrada(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    limit = inputs.thresholds.socio_entrada_recente_days
    start = _company_start(report, inputs)
    recent = {}
    for index, partner in _partners(report):
        path = f"qsa[{index}].data_entrada"
        joined = _date(partner.get("data_entrada"), path)
        # Founders join on the opening date: that is EMPRESA_RECENTE's concern, not a change of control.
        if joined is None or (start is not None and joined <= start[1]):
            continue
        if inputs.days_since(joined) < limit:
            recent.update({f"qsa[{index}].nome": partner.get("nome"), path: partner.get("data_entrada")})
    if recent:
        yield _signal("SOCIO_ENTRADA_RECENTE", Severity.MEDIUM, _(
            "A partner joined the company less than %(limit)s days ago: a possible change of control."),
            recent, limit=limit)


def _is_administrator(partner: Mapping[str, Any]) -> bool:
    qualificacao = partner.get("qualificacao")
    code = _int_code(qualificacao)
    if code is not None:
        return code in QUALIFICACOES_ADMINISTRADOR
    label = _label(qualificacao)
    return label is not None and any(word in _fold(label) for word in _ADMINISTRADOR_WORDS)


def _rule_faixa_etaria(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    thresholds = inputs.thresholds
    severity, evidence = None, {}
    for index, partner in _partners(report):
        faixa = _int_code(partner.get("faixa_etaria"))
        if faixa is None or faixa == 0:
            continue
        young = faixa <= thresholds.socio_faixa_jovem_max and _is_administrator(partner)
        if young or faixa >= thresholds.socio_faixa_idosa_min:
            found = Severity.MEDIUM if young else Severity.LOW
            severity = found if severity is None or found.rank > severity.rank else severity
            evidence.update({f"qsa[{index}].nome": partner.get("nome"),
                             f"qsa[{index}].faixa_etaria": partner.get("faixa_etaria"),
                             f"qsa[{index}].qualificacao": partner.get("qualificacao")})
    if severity is not None:
        yield _signal("SOCIO_FAIXA_ETARIA_ATIPICA", severity, _(
            "A partner is very young for an administrator or very old: a possible front (laranja)."), evidence)


def _rule_qsa_tamanho(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    partners, limit = _partners(report), inputs.thresholds.qsa_grande_limit
    if len(partners) == 1:
        yield _signal("QSA_UNICO", Severity.INFO, _("The company has a single partner or officer."),
                      {"qsa[0].nome": partners[0][1].get("nome")})
    elif len(partners) > limit:
        yield _signal("QSA_GRANDE", Severity.INFO, _(
            "The company has %(count)s partners or officers (signal above %(limit)s)."),
            {"len(qsa)": len(partners)}, count=len(partners), limit=limit)


def _rule_cnae_divergente(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    declared = inputs.declaration.cnaes if inputs.declaration else ()
    codes = _cnae_codes(report)
    if not declared or not codes:
        return
    digits = inputs.thresholds.cnae_match_digits
    unmatched = [cnae for cnae in (_digits(d) for d in declared)
                 if cnae and not any(code.startswith(cnae[:digits]) for _path, code in codes)]
    if unmatched:
        yield _signal("CNAE_DIVERGENTE", Severity.MEDIUM, _(
            "The declared activity (%(declared)s) is not among the company's registered activities, compared on "
            "the first %(digits)s digits."),
            {"declaration.cnaes": unmatched, "cnae_principal.code": _code(report.get("cnae_principal")),
             "cnaes_secundarios[*].code": [_code(c) for c in report.get("cnaes_secundarios") or []]},
            declared=", ".join(unmatched), digits=digits)


def _rule_cnae_sensivel(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    sensitive = inputs.thresholds.cnaes_sensiveis
    evidence = {path: code for path, code in _cnae_codes(report) if any(code.startswith(s) for s in sensitive)}
    if evidence:
        yield _signal("CNAE_SENSIVEL", Severity.MEDIUM, _(
            "The company is registered for an activity on your organization's sensitive list (%(codes)s)."),
            evidence, codes=", ".join(evidence.values()))


def _rule_endereco(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    endereco = report.get("endereco")
    if not isinstance(endereco, Mapping):
        yield _signal("ENDERECO_INCOMPLETO", Severity.LOW, _("The registry gives no address."), {"endereco": None})
        return
    if not _blank(endereco.get("pais")) and _fold(endereco["pais"]) not in {"BRASIL", "BRAZIL"}:
        return
    required = ["cep", "municipio", "uf"]
    # Street and number of natural-person businesses are suppressed for privacy (research §4.2), not missing.
    if not _pessoa_natural(report):
        required[:0] = ["logradouro", "numero"]
    missing = {f"endereco.{key}": endereco.get(key) for key in required if _blank(endereco.get(key))}
    if not _blank(endereco.get("cep")) and len(_digits(endereco["cep"])) != 8:
        missing["endereco.cep"] = endereco["cep"]
    if missing:
        yield _signal("ENDERECO_INCOMPLETO", Severity.LOW, _(
            "The registered address is missing or has invalid values in: %(fields)s."), missing,
            fields=", ".join(path.split(".")[1] for path in missing))


def _phone_valid(phone: Any) -> bool:
    digits = _digits(phone)
    # Area code (DDD) digits are never 0; a number of one repeated digit is a placeholder.
    return len(digits) in (10, 11) and "0" not in digits[:2] and len(set(digits[2:])) > 1


def _rule_contato(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    contato = report.get("contato") or {}
    invalid = {f"contato.telefones[{i}]": phone for i, phone in enumerate(contato.get("telefones") or [])
               if not _phone_valid(phone)}
    email = contato.get("email")
    if not _blank(email) and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", str(email).strip()):
        invalid["contato.email"] = email
    if invalid:
        yield _signal("CONTATO_INVALIDO", Severity.LOW, _(
            "The registered phone or e-mail is not a valid contact."), invalid)


def _rule_desatualizado(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    updated = _date(value_at(report, "provenance.source_updated_at"), "provenance.source_updated_at")
    limit = inputs.thresholds.dados_desatualizados_days
    if updated is not None and inputs.days_since(updated) > limit:
        yield _signal("DADOS_DESATUALIZADOS", Severity.INFO, _(
            "The source's data is %(days)s days old (signal above %(limit)s days): mirrors lag the Receita "
            "Federal's monthly release."),
            {"provenance.source_updated_at": value_at(report, "provenance.source_updated_at"),
             "provenance.provider": value_at(report, "provenance.provider")},
            days=inputs.days_since(updated), limit=limit)


def _rule_fontes(report: Mapping[str, Any], inputs: _Inputs) -> Iterator[Signal]:
    code = _situacao_code(report)
    if code is None:
        return
    evidence = {}
    for index, other in enumerate(inputs.other_sources):
        other_code = _situacao_code(other)
        if other_code is not None and other_code != code:
            name = value_at(other, "provenance.provider") or index
            evidence[f"other_sources[{name}].situacao.code"] = other_code
    if evidence:
        yield _signal("FONTES_DIVERGENTES", Severity.MEDIUM, _(
            "Registry providers disagree on the registration status: check the Receita Federal directly."),
            {"situacao.code": code, "provenance.provider": value_at(report, "provenance.provider"), **evidence})


_RULES: tuple[Callable[[Mapping[str, Any], _Inputs], Iterable[Signal]], ...] = (
    _rule_situacao, _rule_motivo, _rule_situacao_especial, _rule_situacao_recente, _rule_empresa_recente,
    _rule_filial, _rule_capital, _rule_capital_incompativel, _rule_pessoa_natural, _rule_exclusao,
    _rule_sem_socios, _rule_socios, _rule_socio_entrada, _rule_faixa_etaria, _rule_qsa_tamanho,
    _rule_cnae_divergente, _rule_cnae_sensivel, _rule_endereco, _rule_contato, _rule_desatualizado, _rule_fontes,
)


def signals_evaluate(report: Mapping[str, Any], *, thresholds: SignalThresholds, today: date,
                     previous: Mapping[str, Any] | None = None, matriz: Mapping[str, Any] | None = None,
                     other_sources: Sequence[Mapping[str, Any]] = (),
                     declaration: TargetDeclaration | None = None) -> list[Signal]:
    """Every catalog signal `report` (research §3.1 schema v1) triggers, most severe first.

    previous: the target's previous report (a status change between checks is SITUACAO_RECENTE).
    matriz: the head office's report when `report` is a branch. other_sources: reports of the same CNPJ from
    other providers. declaration: what the tenant declared about the target.
    Raises ValueError naming the field when a date or number in the report is malformed.
    """
    inputs = _Inputs(thresholds=thresholds, today=today, previous=previous, matriz=matriz,
                     other_sources=other_sources, declaration=declaration)
    signals = [signal for rule in _RULES for signal in rule(report, inputs)]
    return sorted(signals, key=lambda s: (-s.severity.rank, SIGNAL_CODES.index(s.code)))


def risk_level(signals: Iterable[Signal | Mapping[str, Any]]) -> RiskLevel:
    """The highest severity among `signals` (objects or their `as_dict()`); LOW when none, INFO counts as LOW."""
    highest = Severity.LOW
    for signal in signals:
        severity = Severity(signal["severity"] if isinstance(signal, Mapping) else signal.severity)
        highest = max(highest, severity, key=lambda s: s.rank)
    return RiskLevel(highest)


def risk_summary(signals: Sequence[Signal]) -> dict[str, Any]:
    """The report's `risk` object (research §3.1): {"level", "signals"}, JSON-serializable."""
    return {"level": str(risk_level(signals)), "signals": [signal.as_dict() for signal in signals]}
