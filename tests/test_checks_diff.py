"""Report diffs (checks/diff.py) between reports built from the research's sample payloads."""

from __future__ import annotations

import json
from datetime import date

import pytest

from checks.diff import ChangeKind, RiskLevelChange, report_diff, risk_level_change
from checks.signals import SignalThresholds, risk_summary, signals_evaluate

from .checks_reports import TODAY_ISO, dbone_report, globo_report, okbr_report, serpro_filial_report


def paths(diff) -> list[str]:
    return [change.path for change in diff.changes]


def only_change(diff):
    assert len(diff.changes) == 1, paths(diff)
    return diff.changes[0]


def with_risk(report: dict) -> dict:
    signals = signals_evaluate(report, thresholds=SignalThresholds(), today=date.fromisoformat(TODAY_ISO))
    report["risk"] = risk_summary(signals)
    return report


@pytest.mark.parametrize("build", [dbone_report, globo_report, okbr_report, serpro_filial_report])
def test_identical_reports_have_no_changes(build):
    diff = report_diff(build(), build())
    assert diff.changes == () and not diff.has_changes
    assert not diff.status_changed and not diff.partners_changed and diff.risk_level_change is None
    assert diff.as_dict() == {"changes": [], "status_changed": False, "partners_changed": False,
                              "risk_level_change": None}


def test_list_order_does_not_matter():
    old, new = globo_report(), globo_report()
    for key in ("qsa", "cnaes_secundarios", "inscricoes_estaduais"):
        new[key].reverse()
    new["contato"]["telefones"] = ["2121554552"]
    old["contato"]["telefones"] = ["(21) 2155-4552"]
    assert report_diff(old, new).changes == ()


def test_provider_spelling_differences_are_not_changes():
    """cnpj.ws title-cases and keeps masks where ReceitaWS or minha-receita do not (samples A4/A5)."""
    old, new = globo_report(), globo_report()
    new["endereco"].update({"bairro": "JARDIM BOTÂNICO", "municipio": "RIO DE JANEIRO", "cep": "22.460-901",
                            "complemento": ""})
    new["capital_social"] = "6983568523.860"
    new["qsa"][0]["qualificacao"] = {"code": 10, "label": "Diretor "}
    new["natureza_juridica"]["label"] = "SOCIEDADE ANONIMA FECHADA"
    new["idade_dias"] += 30
    new["provenance"] = {"provider": "receitaws", "source_updated_at": "2024-11-06"}
    assert report_diff(old, new).changes == ()


def test_partner_added():
    old, new = globo_report(), globo_report()
    new["qsa"].append({"nome": "RAYMUNDO COSTA PINTO BARROS", "tipo": "PF", "documento_mascarado": None,
                       "qualificacao": {"code": 10, "label": "Diretor"}, "data_entrada": None,
                       "faixa_etaria": None, "pais": None, "representante_legal": None})
    diff = report_diff(old, new)
    change = only_change(diff)
    assert change.path == "qsa[RAYMUNDO COSTA PINTO BARROS|10]"
    assert change.kind == ChangeKind.ADDED and change.old is None and change.new == new["qsa"][-1]
    assert change.item == "RAYMUNDO COSTA PINTO BARROS (Diretor)" and str(change.label) == "Partner"
    assert diff.partners_changed and not diff.status_changed


def test_partner_removed():
    old, new = globo_report(), globo_report()
    removed = new["qsa"].pop(0)
    diff = report_diff(old, new)
    change = only_change(diff)
    assert (change.path, change.kind, change.old, change.new) == (
        "qsa[PEDRO BORGES GARCIA|10]", ChangeKind.REMOVED, removed, None)
    assert diff.partners_changed


def test_new_qualification_is_a_removal_and_an_addition():
    old, new = dbone_report(), dbone_report()
    new["qsa"][1]["qualificacao"] = {"code": 22, "label": "Sócio"}
    diff = report_diff(old, new)
    assert [(c.path, c.kind) for c in diff.changes] == [
        ("qsa[CARLOS ALBERTO DE BONE|49]", ChangeKind.REMOVED), ("qsa[CARLOS ALBERTO DE BONE|22]", ChangeKind.ADDED)]
    assert diff.partners_changed


def test_partner_attribute_change():
    old, new = globo_report(), globo_report()
    new["qsa"][1]["faixa_etaria"] = {"code": 6, "label": "51 a 60 anos"}
    change = only_change(report_diff(old, new))
    assert change.path == "qsa[PAULO DAUDT MARINHO|10].faixa_etaria"
    assert change.old == {"code": 5, "label": "41 a 50 anos"} and change.new == {"code": 6, "label": "51 a 60 anos"}
    assert change.kind == ChangeKind.CHANGED and change.item == "PAULO DAUDT MARINHO (Diretor)"


def test_status_change():
    old, new = dbone_report(), dbone_report()
    new["situacao"] = {"code": 8, "label": "BAIXADA", "since": "2026-09-01",
                       "motivo": {"code": 1, "label": "Extinção Por Encerramento Liquidação Voluntária"}}
    diff = report_diff(old, new)
    assert paths(diff) == ["situacao.code", "situacao.since", "situacao.motivo"]
    status = diff.changes[0]
    assert (status.old, status.new, status.kind, str(status.label)) == (2, 8, ChangeKind.CHANGED,
                                                                         "Registration status")
    assert diff.status_changed and not diff.partners_changed


def test_special_situation_is_a_status_change():
    old, new = dbone_report(), dbone_report()
    new["situacao_especial"] = {"label": "RECUPERACAO JUDICIAL", "since": "2026-09-01"}
    diff = report_diff(old, new)
    assert paths(diff) == ["situacao_especial"] and diff.status_changed


def test_capital_change():
    old, new = dbone_report(), dbone_report()
    new["capital_social"] = "500000.00"
    change = only_change(report_diff(old, new))
    assert (change.path, change.old, change.new, str(change.label)) == (
        "capital_social", "400000.00", "500000.00", "Share capital")


def test_capital_equal_as_numbers_is_no_change():
    old, new = dbone_report(), dbone_report()
    new["capital_social"] = 400000
    assert report_diff(old, new).changes == ()


def test_activities_address_and_state_registrations():
    old, new = globo_report(), globo_report()
    new["cnae_principal"] = {"code": "6022501", "label": "Programadoras"}
    new["cnaes_secundarios"] = new["cnaes_secundarios"][1:] + [{"code": "6204000", "label": "Consultoria em TI"}]
    new["endereco"]["numero"] = "305"
    new["inscricoes_estaduais"][1]["ativa"] = True
    diff = report_diff(old, new)
    assert [(c.path, c.kind) for c in diff.changes] == [
        ("cnae_principal", ChangeKind.CHANGED),
        ("endereco.numero", ChangeKind.CHANGED),
        ("cnaes_secundarios[5911102]", ChangeKind.REMOVED),
        ("cnaes_secundarios[6204000]", ChangeKind.ADDED),
        ("inscricoes_estaduais[SP|113717433112].ativa", ChangeKind.CHANGED),
    ]
    assert diff.changes[2].item == "5911102 Produção de filmes para publicidade"
    assert (diff.changes[4].old, diff.changes[4].new) == (False, True)
    assert not diff.status_changed and not diff.partners_changed


def test_repeated_identities_pair_up_regardless_of_order():
    old, new = dbone_report(), dbone_report()
    twin = dict(old["qsa"][0], documento_mascarado="***999999**")
    old["qsa"].append(twin)
    new["qsa"] = [dict(twin), *new["qsa"]]
    assert report_diff(old, new).changes == ()


@pytest.mark.parametrize(("old", "new", "change"), [
    ("LOW", "HIGH", RiskLevelChange.RAISED),
    ("MEDIUM", "BLOCKER", RiskLevelChange.RAISED),
    ("HIGH", "MEDIUM", RiskLevelChange.LOWERED),
    ("MEDIUM", "MEDIUM", None),
    (None, "HIGH", None),
])
def test_risk_level_change(old, new, change):
    assert risk_level_change(old, new) == change


def test_risk_level_change_rejects_unknown_levels():
    with pytest.raises(ValueError):
        risk_level_change("LOW", "CRITICAL")


def test_diff_of_evaluated_reports_for_a_monitoring_alert():
    old = with_risk(dbone_report())
    new = dbone_report()
    new["situacao"] = {"code": 4, "label": "INAPTA", "since": "2026-09-10",
                       "motivo": {"code": 63, "label": "Omissão De Declarações"}}
    new = with_risk(new)
    diff = report_diff(old, new)
    assert diff.status_changed and diff.risk_level_change == RiskLevelChange.RAISED
    added_signals = [c.path for c in diff.changes if c.path.startswith("risk.signals[")]
    assert added_signals == ["risk.signals[MOTIVO_GRAVE]", "risk.signals[SITUACAO_INAPTA]",
                             "risk.signals[SITUACAO_RECENTE]"]
    level = next(c for c in diff.changes if c.path == "risk.level")
    assert (level.old, level.new) == ("LOW", "HIGH")
    stored = json.loads(json.dumps(diff.as_dict()))
    assert stored["status_changed"] is True and stored["risk_level_change"] == "raised"
    assert stored["changes"][0] == {"path": "situacao.code", "label": "Registration status", "kind": "changed",
                                    "old": 2, "new": 4, "item": None}
