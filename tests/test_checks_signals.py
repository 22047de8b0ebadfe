"""Risk signals (checks/signals.py) over reports built from the research's sample payloads."""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from checks.signals import (
    SIGNAL_CODES,
    RiskLevel,
    Severity,
    SignalThresholds,
    SignalThresholdsError,
    TargetDeclaration,
    risk_level,
    risk_summary,
    signals_evaluate,
)

from .checks_reports import (
    TODAY_ISO,
    dbone_report,
    globo_report,
    mei_baixada_report,
    okbr_report,
    serpro_filial_report,
    serpro_matriz_report,
)

TODAY = date.fromisoformat(TODAY_ISO)
DEFAULTS = SignalThresholds()


def evaluate(report: dict[str, Any], thresholds: SignalThresholds = DEFAULTS, **context: Any):
    return signals_evaluate(report, thresholds=thresholds, today=TODAY, **context)


def by_code(signals) -> dict[str, Any]:
    return {signal.code: signal for signal in signals}


def changed(report: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`report` with top-level fields replaced, or nested ones given as `endereco__numero=...`."""
    for name, value in fields.items():
        target, *path = name.split("__")
        holder = report
        for part in [target, *path][:-1]:
            holder = holder[part]
        holder[([target, *path])[-1]] = value
    return report


def partner(nome: str, *, tipo: str = "PF", qualificacao=(22, "Sócio"), data_entrada="2010-01-01", faixa=(5, "41 a 50"),
            pais: str | None = "Brasil", documento: str = "***123456**") -> dict[str, Any]:
    return {"nome": nome, "tipo": tipo, "documento_mascarado": documento,
            "qualificacao": {"code": qualificacao[0], "label": qualificacao[1]}, "data_entrada": data_entrada,
            "faixa_etaria": {"code": faixa[0], "label": faixa[1]}, "pais": pais, "representante_legal": None}


def with_partner(report: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    report["qsa"].append(extra)
    return report


def resolve(data: Any, path: str) -> Any:
    """The value at an evidence path: `qsa[1].data_entrada`, `cnaes_secundarios[*].code` (a list)."""
    name, index, rest = re.fullmatch(r"([^.\[\]]+)(?:\[(\d+|\*)\])?(?:\.(.+))?", path).groups()
    value = data[name]
    if index == "*":
        return [resolve(item, rest) if rest else item for item in value]
    if index:
        value = value[int(index)]
    return resolve(value, rest) if rest else value


# code -> (report, context for signals_evaluate, severity, evidence the signal must carry)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], Severity, dict[str, Any]]] = {
    "SITUACAO_BAIXADA": (
        changed(dbone_report(), situacao={"code": 8, "label": "BAIXADA", "since": "2018-02-01", "motivo": None}),
        {}, Severity.BLOCKER, {"situacao.code": 8, "situacao.label": "BAIXADA"}),
    "SITUACAO_NULA": (
        changed(dbone_report(), situacao={"code": 1, "label": "NULA", "since": "2010-01-01", "motivo": None}),
        {}, Severity.BLOCKER, {"situacao.code": 1}),
    "SITUACAO_INAPTA": (
        changed(dbone_report(), situacao={"code": 4, "label": "INAPTA", "since": "2020-01-01", "motivo": None}),
        {}, Severity.HIGH, {"situacao.code": 4, "situacao.since": "2020-01-01"}),
    "SITUACAO_SUSPENSA": (
        changed(dbone_report(), situacao={"code": 3, "label": "SUSPENSA", "since": "2020-01-01", "motivo": None}),
        {}, Severity.HIGH, {"situacao.code": 3}),
    "MOTIVO_GRAVE": (
        changed(dbone_report(), situacao={"code": 4, "label": "INAPTA", "since": "2020-01-01",
                                          "motivo": {"code": 15, "label": "Inexistente De Fato"}}),
        {}, Severity.HIGH, {"situacao.motivo.code": 15, "situacao.motivo.label": "Inexistente De Fato"}),
    "SITUACAO_ESPECIAL": (
        changed(dbone_report(), situacao_especial={"label": "FALIDO", "since": "2026-01-10"}),
        {}, Severity.HIGH, {"situacao_especial.label": "FALIDO", "situacao_especial.since": "2026-01-10"}),
    "SITUACAO_RECENTE": (
        changed(dbone_report(), situacao={"code": 3, "label": "SUSPENSA", "since": "2026-08-01", "motivo": None}),
        {}, Severity.MEDIUM, {"situacao.code": 3, "situacao.since": "2026-08-01"}),
    "EMPRESA_RECENTE": (
        changed(dbone_report(), data_inicio_atividade="2026-06-01"),
        {}, Severity.MEDIUM, {"data_inicio_atividade": "2026-06-01"}),
    "ESTABELECIMENTO_FILIAL": (
        serpro_filial_report(), {}, Severity.INFO, {"is_matriz": False, "matriz_cnpj": "33683111000107"}),
    "MATRIZ_NAO_ATIVA": (
        serpro_filial_report(), {"matriz": serpro_matriz_report(situacao_code=4, situacao_label="INAPTA")},
        Severity.HIGH, {"matriz.cnpj": "33683111000107", "matriz.situacao.code": 4}),
    "CAPITAL_NAO_INFORMADO": (
        changed(dbone_report(), capital_social="0.00"),
        {}, Severity.MEDIUM, {"capital_social": "0.00", "natureza_juridica.code": "2062"}),
    "CAPITAL_BAIXO": (
        changed(dbone_report(), capital_social="500.00"),
        {}, Severity.LOW, {"capital_social": "500.00", "natureza_juridica.code": "2062"}),
    "CAPITAL_INCOMPATIVEL": (
        dbone_report(), {"declaration": TargetDeclaration(transaction_amount=Decimal("5000000"))},
        Severity.MEDIUM, {"capital_social": "400000.00", "declaration.transaction_amount": "5000000"}),
    "PESSOA_NATURAL": (
        changed(dbone_report(), mei__optante=True), {}, Severity.INFO, {"mei.optante": True}),
    "MEI_EXCLUIDO": (
        changed(dbone_report(), mei__excluido_em="2026-03-01"), {}, Severity.LOW, {"mei.excluido_em": "2026-03-01"}),
    "SIMPLES_EXCLUIDO": (
        changed(dbone_report(), simples__excluido_em="2025-12-31"),
        {}, Severity.LOW, {"simples.excluido_em": "2025-12-31"}),
    "SEM_SOCIOS": (
        changed(dbone_report(), qsa=[]), {}, Severity.MEDIUM, {"qsa": [], "natureza_juridica.code": "2062"}),
    "SOCIO_PJ": (
        with_partner(dbone_report(), partner("GLOBO COMUNICACAO E PARTICIPACOES S/A", tipo="PJ",
                                             documento="27865757000102", faixa=(0, "Não se aplica"))),
        {}, Severity.INFO, {"qsa[2].nome": "GLOBO COMUNICACAO E PARTICIPACOES S/A", "qsa[2].tipo": "PJ"}),
    "SOCIO_ESTRANGEIRO": (
        with_partner(dbone_report(), partner("JOAO EXEMPLO", tipo="ESTRANGEIRO", pais="Portugal")),
        {}, Severity.MEDIUM, {"qsa[2].nome": "JOAO EXEMPLO", "qsa[2].tipo": "ESTRANGEIRO", "qsa[2].pais": "Portugal"}),
    "SOCIO_ENTRADA_RECENTE": (
        with_partner(dbone_report(), partner("NOVO SOCIO", data_entrada="2026-08-15")),
        {}, Severity.MEDIUM, {"qsa[2].nome": "NOVO SOCIO", "qsa[2].data_entrada": "2026-08-15"}),
    "SOCIO_FAIXA_ETARIA_ATIPICA": (
        with_partner(dbone_report(), partner("JOVEM ADMIN", qualificacao=(49, "Sócio-Administrador"),
                                             faixa=(2, "13 a 20 anos"))),
        {}, Severity.MEDIUM,
        {"qsa[2].nome": "JOVEM ADMIN", "qsa[2].faixa_etaria": {"code": 2, "label": "13 a 20 anos"}}),
    "QSA_UNICO": (okbr_report(), {}, Severity.INFO, {"qsa[0].nome": "HAYDEE SVAB"}),
    "QSA_GRANDE": (
        changed(dbone_report(), qsa=[partner(f"SOCIO {n}") for n in range(11)]), {}, Severity.INFO, {}),
    "CNAE_DIVERGENTE": (
        dbone_report(), {"declaration": TargetDeclaration(cnaes=("6201501",))},
        Severity.MEDIUM, {"declaration.cnaes": ["6201501"], "cnae_principal.code": "4639701",
                          "cnaes_secundarios[*].code": [c["code"] for c in dbone_report()["cnaes_secundarios"]]}),
    "CNAE_SENSIVEL": (
        changed(dbone_report(), cnaes_secundarios=dbone_report()["cnaes_secundarios"] + [
            {"code": "6491300", "label": "Sociedades de fomento mercantil - factoring"}]),
        {}, Severity.MEDIUM, {"cnaes_secundarios[7].code": "6491300"}),
    "ENDERECO_INCOMPLETO": (
        changed(dbone_report(), endereco__numero=None, endereco__cep="2914567"),
        {}, Severity.LOW, {"endereco.numero": None, "endereco.cep": "2914567"}),
    "CONTATO_INVALIDO": (
        changed(dbone_report(), contato__telefones=["2732861717", "00"]),
        {}, Severity.LOW, {"contato.telefones[1]": "00"}),
    "DADOS_DESATUALIZADOS": (
        globo_report(), {}, Severity.INFO, {"provenance.source_updated_at": "2024-06-26",
                                            "provenance.provider": "cnpjws"}),
    "FONTES_DIVERGENTES": (
        dbone_report(), {"other_sources": [changed(
            dbone_report(), situacao={"code": 4, "label": "INAPTA", "since": "2026-07-01", "motivo": None},
            provenance={"provider": "receitaws", "source_updated_at": "2026-09-01"})]},
        Severity.MEDIUM, {"situacao.code": 2, "other_sources[receitaws].situacao.code": 4}),
}

CONTEXT_PREFIXES = ("previous.", "matriz.", "declaration.", "other_sources[", "len(")


def test_every_catalog_code_has_a_case():
    assert set(CASES) == set(SIGNAL_CODES)


def test_clean_report_has_no_signal_and_low_risk():
    signals = evaluate(dbone_report())
    assert signals == []
    assert risk_level(signals) == RiskLevel.LOW
    assert risk_summary(signals) == {"level": "LOW", "signals": []}


@pytest.mark.parametrize("code", list(CASES))
def test_signal_fires_on_crafted_report_with_its_severity_and_evidence(code):
    report, context, severity, evidence = CASES[code]
    fired = by_code(evaluate(report, **context))
    assert code in fired, f"{code} did not fire: {sorted(fired)}"
    signal = fired[code]
    assert signal.severity == severity
    assert evidence.items() <= signal.evidence.items()
    # Every evidence path that points into the report holds the value the report has there.
    for path, value in signal.evidence.items():
        if not path.startswith(CONTEXT_PREFIXES):
            assert resolve(report, path) == value, path
    assert str(signal.title) and str(signal.explanation)
    json.dumps(signal.as_dict())


def test_no_signal_fires_on_the_clean_report_given_every_kind_of_context():
    context = {
        "previous": dbone_report(), "matriz": serpro_matriz_report(), "other_sources": [dbone_report()],
        "declaration": TargetDeclaration(transaction_amount=Decimal("1000000"), cnaes=("4639701", "4723")),
    }
    assert evaluate(dbone_report(), **context) == []


def test_samples_as_the_registry_gives_them():
    assert [s.code for s in evaluate(globo_report())] == ["DADOS_DESATUALIZADOS"]
    assert [s.code for s in evaluate(okbr_report())] == ["QSA_UNICO"]
    # An association's capital 0 is normal: no capital signal for natureza 3999.
    assert risk_level(evaluate(okbr_report())) == RiskLevel.LOW
    serpro = evaluate(serpro_filial_report(), matriz=serpro_matriz_report())
    assert [s.code for s in serpro] == ["ESTABELECIMENTO_FILIAL"]
    mei = evaluate(mei_baixada_report())
    assert {"SITUACAO_BAIXADA", "PESSOA_NATURAL"} <= set(by_code(mei))
    # Natureza 2135 needs no QSA and its capital R$ 1.00 is not "low" for a sole proprietor.
    assert not {"SEM_SOCIOS", "CAPITAL_BAIXO", "MEI_EXCLUIDO"} & set(by_code(mei))
    assert risk_level(mei) == RiskLevel.BLOCKER


def test_signals_come_most_severe_first():
    report = changed(dbone_report(), situacao={"code": 8, "label": "BAIXADA", "since": "2026-09-01", "motivo": None},
                     qsa=[partner("UNICO")], capital_social="100.00")
    severities = [s.severity.rank for s in evaluate(report)]
    assert severities == sorted(severities, reverse=True)
    assert [s.code for s in evaluate(report)][:2] == ["SITUACAO_BAIXADA", "SITUACAO_RECENTE"]


def test_situacao_especial_recuperacao_is_medium_and_a_bare_label_is_read():
    fired = by_code(evaluate(changed(dbone_report(), situacao_especial="RECUPERAÇÃO JUDICIAL")))
    assert fired["SITUACAO_ESPECIAL"].severity == Severity.MEDIUM
    assert fired["SITUACAO_ESPECIAL"].evidence == {"situacao_especial": "RECUPERAÇÃO JUDICIAL"}
    assert "SITUACAO_ESPECIAL" not in by_code(evaluate(changed(dbone_report(), situacao_especial="")))


def test_motivo_given_as_text_only_is_matched_by_its_words():
    report = changed(dbone_report(), situacao={"code": 4, "label": "INAPTA", "since": "2020-01-01",
                                               "motivo": "OMISSÃO DE DECLARAÇÕES"})
    assert by_code(evaluate(report))["MOTIVO_GRAVE"].evidence == {"situacao.motivo": "OMISSÃO DE DECLARAÇÕES"}
    voluntary = changed(dbone_report(), situacao={"code": 8, "label": "BAIXADA", "since": "2020-01-01", "motivo": {
        "code": 1, "label": "Extinção Por Encerramento Liquidação Voluntária"}})
    assert "MOTIVO_GRAVE" not in by_code(evaluate(voluntary))


def test_status_change_between_checks_is_situacao_recente_even_back_to_active():
    previous = changed(dbone_report(), situacao={"code": 4, "label": "INAPTA", "since": "2024-01-01", "motivo": None})
    signal = by_code(evaluate(dbone_report(), previous=previous))["SITUACAO_RECENTE"]
    assert signal.evidence["previous.situacao.code"] == 4 and signal.evidence["situacao.code"] == 2
    assert "INAPTA" in str(signal.explanation) and "ATIVA" in str(signal.explanation)
    assert "SITUACAO_RECENTE" not in by_code(evaluate(dbone_report(), previous=dbone_report()))
    old_change = changed(dbone_report(), situacao={"code": 4, "label": "INAPTA", "since": "2026-01-01", "motivo": None})
    assert "SITUACAO_RECENTE" not in by_code(evaluate(old_change))


def test_branch_age_comes_from_the_head_office():
    branch = changed(serpro_filial_report(), data_inicio_atividade="2026-08-01")
    assert "EMPRESA_RECENTE" not in by_code(evaluate(branch, matriz=serpro_matriz_report()))
    assert "EMPRESA_RECENTE" not in by_code(evaluate(branch))
    young_matriz = changed(serpro_matriz_report(), data_inicio_atividade="2026-08-01")
    signal = by_code(evaluate(branch, matriz=young_matriz))["EMPRESA_RECENTE"]
    assert signal.evidence == {"matriz.data_inicio_atividade": "2026-08-01"}


def test_founders_joining_on_the_opening_date_are_not_a_change_of_control():
    report = changed(dbone_report(), data_inicio_atividade="2026-08-15")
    for item in report["qsa"]:
        item["data_entrada"] = "2026-08-15"
    fired = by_code(evaluate(report))
    assert "EMPRESA_RECENTE" in fired and "SOCIO_ENTRADA_RECENTE" not in fired


def test_faixa_etaria_young_needs_an_administrator_old_is_low():
    young_partner = with_partner(dbone_report(), partner("JOVEM SOCIO", faixa=(2, "13 a 20 anos")))
    assert "SOCIO_FAIXA_ETARIA_ATIPICA" not in by_code(evaluate(young_partner))
    old = with_partner(dbone_report(), partner("IDOSO", faixa=(9, "Maiores de 80 anos")))
    assert by_code(evaluate(old))["SOCIO_FAIXA_ETARIA_ATIPICA"].severity == Severity.LOW


def test_natural_person_address_suppressed_for_privacy_is_not_incomplete():
    report = changed(dbone_report(), natureza_juridica={"code": "2135", "label": "Empresário (Individual)",
                                                         "pessoa_natural": True}, qsa=[],
                     endereco__logradouro=None, endereco__numero=None)
    fired = by_code(evaluate(report))
    assert "ENDERECO_INCOMPLETO" not in fired and "PESSOA_NATURAL" in fired
    assert fired["PESSOA_NATURAL"].evidence == {"natureza_juridica.code": "2135",
                                                "natureza_juridica.pessoa_natural": True}


def test_cnae_divergente_compares_at_the_configured_level():
    declared = {"declaration": TargetDeclaration(cnaes=("4631-1/00",))}
    assert "CNAE_DIVERGENTE" not in by_code(evaluate(dbone_report(), **declared))
    strict = SignalThresholds.from_settings({"cnae_match_digits": 7})
    signal = by_code(evaluate(dbone_report(), strict, **declared))["CNAE_DIVERGENTE"]
    assert signal.evidence["declaration.cnaes"] == ["4631100"]


@pytest.mark.parametrize(("settings", "report", "code", "before", "after"), [
    ({"empresa_recente_low_days": 200}, changed(dbone_report(), data_inicio_atividade="2026-01-01"),
     "EMPRESA_RECENTE", Severity.LOW, None),
    ({"empresa_recente_medium_days": 300, "empresa_recente_low_days": 400},
     changed(dbone_report(), data_inicio_atividade="2026-01-01"), "EMPRESA_RECENTE", Severity.LOW, Severity.MEDIUM),
    ({"capital_baixo_limit": "10000"}, changed(dbone_report(), capital_social="5000.00"), "CAPITAL_BAIXO",
     None, Severity.LOW),
    ({"dados_desatualizados_days": 30}, dbone_report(), "DADOS_DESATUALIZADOS", None, Severity.INFO),
    ({"qsa_grande_limit": 5}, serpro_filial_report(), "QSA_GRANDE", None, Severity.INFO),
    ({"cnaes_sensiveis": ["4723"]}, dbone_report(), "CNAE_SENSIVEL", None, Severity.MEDIUM),
    ({"cnaes_sensiveis": []}, CASES["CNAE_SENSIVEL"][0], "CNAE_SENSIVEL", Severity.MEDIUM, None),
    ({"motivos_graves": [63]}, CASES["MOTIVO_GRAVE"][0], "MOTIVO_GRAVE", Severity.HIGH, None),
    ({"socio_entrada_recente_days": 30}, CASES["SOCIO_ENTRADA_RECENTE"][0], "SOCIO_ENTRADA_RECENTE",
     Severity.MEDIUM, None),
    ({"exclusao_recente_days": 90}, CASES["SIMPLES_EXCLUIDO"][0], "SIMPLES_EXCLUIDO", Severity.LOW, None),
    ({"situacao_recente_days": 30}, CASES["SITUACAO_RECENTE"][0], "SITUACAO_RECENTE", Severity.MEDIUM, None),
    ({"socio_faixa_idosa_min": 7}, dbone_report(), "SOCIO_FAIXA_ETARIA_ATIPICA", None, Severity.LOW),
])
def test_thresholds_change_the_outcome(settings, report, code, before, after):
    def severity(thresholds):
        signal = by_code(evaluate(report, thresholds)).get(code)
        return signal.severity if signal else None

    assert severity(DEFAULTS) == before
    assert severity(SignalThresholds.from_settings(settings)) == after


def test_capital_incompativel_multiple_is_configurable():
    context = {"declaration": TargetDeclaration(transaction_amount=Decimal("3000000"))}
    assert "CAPITAL_INCOMPATIVEL" not in by_code(evaluate(dbone_report(), **context))
    tight = SignalThresholds.from_settings({"capital_incompativel_multiple": 5})
    assert "CAPITAL_INCOMPATIVEL" in by_code(evaluate(dbone_report(), tight, **context))


def test_thresholds_from_settings_defaults_unknown_keys_and_round_trip():
    assert SignalThresholds.from_settings(None) == DEFAULTS == SignalThresholds.from_settings({})
    thresholds = SignalThresholds.from_settings({
        "situacao_recente_days": "30", "capital_baixo_limit": 2500.5, "cnaes_sensiveis": ["6491-3/00", "92"],
        "motivos_graves": [15, "61"], "theme": "dark", "qsa_grande_limit": 20,
    })
    assert thresholds.situacao_recente_days == 30
    assert thresholds.capital_baixo_limit == Decimal("2500.5")
    assert thresholds.cnaes_sensiveis == ("6491300", "92")
    assert thresholds.motivos_graves == (15, 61)
    settings = thresholds.as_settings()
    assert json.loads(json.dumps(settings)) == settings
    assert SignalThresholds.from_settings(settings) == thresholds
    assert DEFAULTS.as_settings()["empresa_recente_medium_days"] == 180


@pytest.mark.parametrize(("settings", "bad_keys"), [
    ({"situacao_recente_days": -1}, {"situacao_recente_days"}),
    ({"situacao_recente_days": "ninety"}, {"situacao_recente_days"}),
    ({"situacao_recente_days": True}, {"situacao_recente_days"}),
    ({"situacao_recente_days": 1.5}, {"situacao_recente_days"}),
    ({"capital_baixo_limit": "R$ 1.000"}, {"capital_baixo_limit"}),
    ({"capital_baixo_limit": "NaN"}, {"capital_baixo_limit"}),
    ({"capital_incompativel_multiple": 0}, {"capital_incompativel_multiple"}),
    ({"cnae_match_digits": 1}, {"cnae_match_digits"}),
    ({"cnaes_sensiveis": "6491300"}, {"cnaes_sensiveis"}),
    ({"cnaes_sensiveis": ["factoring"]}, {"cnaes_sensiveis"}),
    ({"motivos_graves": [15, None]}, {"motivos_graves"}),
    ({"qsa_grande_limit": 0, "socio_faixa_jovem_max": 12, "theme": "ignored"},
     {"qsa_grande_limit", "socio_faixa_jovem_max"}),
    ({"empresa_recente_medium_days": 400}, {"empresa_recente_medium_days"}),
])
def test_bad_settings_are_rejected_naming_each_key(settings, bad_keys):
    with pytest.raises(SignalThresholdsError) as raised:
        SignalThresholds.from_settings(settings)
    assert set(raised.value.errors) == bad_keys
    for key in bad_keys:
        assert key in str(raised.value)


def test_settings_must_be_an_object():
    with pytest.raises(SignalThresholdsError):
        SignalThresholds.from_settings(["situacao_recente_days", 90])


def test_malformed_report_date_names_the_field():
    with pytest.raises(ValueError, match="data_inicio_atividade"):
        evaluate(changed(dbone_report(), data_inicio_atividade="31/01/1986"))


@pytest.mark.parametrize(("severities", "level"), [
    ([], RiskLevel.LOW),
    ([Severity.INFO, Severity.INFO], RiskLevel.LOW),
    ([Severity.INFO, Severity.LOW], RiskLevel.LOW),
    ([Severity.LOW, Severity.MEDIUM, Severity.INFO], RiskLevel.MEDIUM),
    ([Severity.MEDIUM, Severity.HIGH], RiskLevel.HIGH),
    ([Severity.HIGH, Severity.BLOCKER, Severity.LOW], RiskLevel.BLOCKER),
])
def test_risk_level_is_the_highest_severity_info_counting_as_low(severities, level):
    stored = [{"code": "X", "severity": str(severity)} for severity in severities]
    assert risk_level(stored) == level


def test_risk_summary_is_the_reports_risk_object():
    report, context, _severity, _evidence = CASES["MATRIZ_NAO_ATIVA"]
    signals = evaluate(report, **context)
    summary = risk_summary(signals)
    assert summary["level"] == "HIGH" == risk_level(signals)
    assert [s["code"] for s in summary["signals"]] == ["MATRIZ_NAO_ATIVA", "ESTABELECIMENTO_FILIAL"]
    assert json.loads(json.dumps(summary)) == summary
    assert risk_level(summary["signals"]) == RiskLevel.HIGH
