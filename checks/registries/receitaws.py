"""ReceitaWS free API: `GET /v1/cnpj/{cnpj}`, 3 requests a minute, legacy formats.

Errors arrive as HTTP 200 with `{"status": "ERROR", "message": …}`: always branch on `status`.
Its partner list has names and roles only (no documents, dates or age groups), so a record
from ReceitaWS is partial.
"""

from __future__ import annotations

import re
from typing import Any

from . import normalize as n
from .base import ERROR, FOUND, NOT_FOUND, UNAVAILABLE, UNSUPPORTED, RegistryClient

_CODE_LABEL = re.compile(r"^\s*(\d+)\s*-\s*(.*)$")  # "10-Diretor", "206-2 - Sociedade Empresária Limitada"
_NATUREZA = re.compile(r"^\s*(\d{3})-?(\d)\s*-\s*(.*)$")


class ReceitaWsClient(RegistryClient):
    name = "receitaws"
    base_url_setting = "RECEITAWS_BASE_URL"

    def url(self, cnpj: str) -> str:
        return f"{self.base_url}/v1/cnpj/{cnpj}"

    def is_company(self, payload: dict) -> bool:
        return bool(payload.get("nome")) and bool(payload.get("cnpj"))

    def classify_ok(self, payload: dict) -> tuple[str, str]:
        status = str(payload.get("status") or "").upper()
        if status == "OK":
            return (FOUND, "") if self.is_company(payload) else (ERROR, "not_a_company")
        if status != "ERROR":
            return ERROR, "unknown_status"
        message = n.ascii_upper(str(payload.get("message") or ""))
        if "REJEITADO" in message or "NAO ENCONTRADO" in message:
            return NOT_FOUND, "rejeitado"
        if "INVALIDO" in message:
            return UNSUPPORTED, "invalido"
        if "TIMEOUT" in message or "INDISPONIVEL" in message:
            return UNAVAILABLE, "timeout"
        return ERROR, "error_status"

    def normalize(self, payload: dict, *, cnpj: str, fetched_at: str) -> dict:
        return normalize_receitaws(payload, cnpj=cnpj, fetched_at=fetched_at)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _code_label(value: Any) -> tuple[int | None, str | None]:
    value = n.text(value)
    if not value:
        return None, None
    match = _CODE_LABEL.match(value)
    return (int(match.group(1)), n.text(match.group(2))) if match else (None, value)


def _natureza(value: Any) -> dict | None:
    match = _NATUREZA.match(n.text(value) or "")
    return n.natureza(match.group(1) + match.group(2), match.group(3)) if match else None


def _activities(values: Any) -> list[dict]:
    return [c for c in (n.cnae(a.get("code"), a.get("text")) for a in _list(values) if isinstance(a, dict)) if c]


def normalize_receitaws(payload: dict, *, cnpj: str, fetched_at: str) -> dict:
    simples, simei = _dict(payload.get("simples")), _dict(payload.get("simei"))
    principal = _activities(payload.get("atividade_principal"))
    motivo = n.text(payload.get("motivo_situacao"))
    tipo = (n.text(payload.get("tipo")) or "").upper()
    return n.company_record(
        cnpj=n.payload_cnpj(payload.get("cnpj"), cnpj),
        provider=ReceitaWsClient.name,
        fetched_at=fetched_at,
        source_updated_at=n.iso_date(payload.get("ultima_atualizacao")),
        is_matriz={"MATRIZ": True, "FILIAL": False}.get(tipo),
        razao_social=n.text(payload.get("nome")),
        nome_fantasia=n.text(payload.get("fantasia")),
        situacao=n.situacao(payload.get("situacao"), since=payload.get("data_situacao"),
                            motivo={"code": None, "label": motivo} if motivo else None),
        situacao_especial=n.situacao_especial(payload.get("situacao_especial"), payload.get("data_situacao_especial")),
        data_inicio_atividade=n.iso_date(payload.get("abertura")),
        natureza_juridica=_natureza(payload.get("natureza_juridica")),
        porte=n.porte(None, payload.get("porte")),
        capital_social=n.decimal_string(payload.get("capital_social")),
        cnae_principal=principal[0] if principal else None,
        cnaes_secundarios=_activities(payload.get("atividades_secundarias")),
        endereco=n.endereco(logradouro=payload.get("logradouro"), numero=payload.get("numero"),
                            complemento=payload.get("complemento"), bairro=payload.get("bairro"),
                            cep=payload.get("cep"), municipio=payload.get("municipio"), uf=payload.get("uf")),
        contato={"telefones": n.phones(*str(payload.get("telefone") or "").split("/")), "fax": None,
                 "email": n.text(payload.get("email"))},
        simples=n.optante(simples.get("optante"), simples.get("data_opcao"), simples.get("data_exclusao"))
        if simples else n.optante(None, None, None),
        mei=n.optante(simei.get("optante"), simei.get("data_opcao"), simei.get("data_exclusao"))
        if simei else n.optante(None, None, None),
        qsa=[_partner(p) for p in _list(payload.get("qsa")) if isinstance(p, dict)],
    )


def _partner(partner: dict) -> dict:
    code, label = _code_label(partner.get("qual"))
    representative_code, representative_label = _code_label(partner.get("qual_rep_legal"))
    representative = n.text(partner.get("nome_rep_legal"))
    return {
        "nome": n.text(partner.get("nome")),
        "tipo": None,
        "documento_mascarado": None,
        "qualificacao": {"code": code, "label": label},
        "data_entrada": None,
        "faixa_etaria": None,
        "pais": n.text(partner.get("pais_origem")),
        "representante_legal": {"nome": representative, "documento_mascarado": None,
                                "qualificacao": {"code": representative_code, "label": representative_label}}
        if representative else None,
    }
