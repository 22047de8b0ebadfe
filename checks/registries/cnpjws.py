"""publica.cnpj.ws (CNPJ.ws public API): `GET /cnpj/{cnpj}`, nested payload, 3 requests a minute per IP.

Its capital is an exact decimal string and it is the only provider with state registrations.
"""

from __future__ import annotations

from typing import Any

from . import normalize as n
from .base import RegistryClient

TIPOS_SOCIO = {"PESSOA FISICA": "PF", "PESSOA JURIDICA": "PJ", "ESTRANGEIRO": "ESTRANGEIRO"}


class CnpjWsClient(RegistryClient):
    name = "cnpjws"
    base_url_setting = "CNPJWS_BASE_URL"

    def url(self, cnpj: str) -> str:
        return f"{self.base_url}/cnpj/{cnpj}"

    def is_company(self, payload: dict) -> bool:
        return isinstance(payload.get("estabelecimento"), dict) and bool(payload.get("razao_social"))

    def normalize(self, payload: dict, *, cnpj: str, fetched_at: str) -> dict:
        return normalize_cnpjws(payload, cnpj=cnpj, fetched_at=fetched_at)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def normalize_cnpjws(payload: dict, *, cnpj: str, fetched_at: str) -> dict:
    est = _dict(payload.get("estabelecimento"))
    simples = payload.get("simples")
    simples_known = isinstance(simples, dict)
    simples = _dict(simples)
    motivo = _dict(est.get("motivo_situacao_cadastral"))
    principal = _dict(est.get("atividade_principal"))
    tipo = n.text(est.get("tipo"))
    cidade = _dict(est.get("cidade"))
    return n.company_record(
        cnpj=n.payload_cnpj(est.get("cnpj"), cnpj),
        provider=CnpjWsClient.name,
        fetched_at=fetched_at,
        source_updated_at=n.iso_date(payload.get("atualizado_em") or est.get("atualizado_em")),
        is_matriz={"MATRIZ": True, "FILIAL": False}.get((tipo or "").upper()),
        razao_social=n.text(payload.get("razao_social")),
        nome_fantasia=n.text(est.get("nome_fantasia")),
        situacao=n.situacao(est.get("situacao_cadastral"), since=est.get("data_situacao_cadastral"),
                            motivo=n.motivo(motivo.get("id"), motivo.get("descricao")) if motivo else None),
        situacao_especial=n.situacao_especial(est.get("situacao_especial"), est.get("data_situacao_especial")),
        data_inicio_atividade=n.iso_date(est.get("data_inicio_atividade")),
        natureza_juridica=n.natureza(_dict(payload.get("natureza_juridica")).get("id"),
                                     _dict(payload.get("natureza_juridica")).get("descricao")),
        porte=n.porte(_dict(payload.get("porte")).get("id"), _dict(payload.get("porte")).get("descricao")),
        capital_social=n.decimal_string(payload.get("capital_social")),
        cnae_principal=n.cnae(principal.get("id"), principal.get("descricao")) if principal else None,
        cnaes_secundarios=[c for c in (n.cnae(a.get("id"), a.get("descricao"))
                                       for a in _list(est.get("atividades_secundarias")) if isinstance(a, dict)) if c],
        endereco=n.endereco(
            tipo_logradouro=est.get("tipo_logradouro"), logradouro=est.get("logradouro"), numero=est.get("numero"),
            complemento=est.get("complemento"), bairro=est.get("bairro"), cep=est.get("cep"),
            municipio=cidade.get("nome"), codigo_municipio_ibge=cidade.get("ibge_id"),
            uf=_dict(est.get("estado")).get("sigla"), pais=_dict(est.get("pais")).get("nome"),
            cidade_exterior=est.get("nome_cidade_exterior"),
        ),
        contato={
            "telefones": n.phones(_phone(est.get("ddd1"), est.get("telefone1")),
                                  _phone(est.get("ddd2"), est.get("telefone2"))),
            "fax": n.digits(_phone(est.get("ddd_fax"), est.get("fax"))),
            "email": n.text(est.get("email")),
        },
        simples=n.optante(simples.get("simples") if simples_known else None, simples.get("data_opcao_simples"),
                          simples.get("data_exclusao_simples")),
        mei=n.optante(simples.get("mei") if simples_known else None, simples.get("data_opcao_mei"),
                      simples.get("data_exclusao_mei")),
        qsa=[_partner(p) for p in _list(payload.get("socios")) if isinstance(p, dict)],
        inscricoes_estaduais=[
            {"uf": _dict(ie.get("estado")).get("sigla"), "numero": n.text(ie.get("inscricao_estadual")),
             "ativa": ie.get("ativo") if isinstance(ie.get("ativo"), bool) else None}
            for ie in _list(est.get("inscricoes_estaduais")) if isinstance(ie, dict)
        ],
        regime_tributario=[
            {"ano": n.integer(r.get("ano")), "forma_de_tributacao": n.text(r.get("forma_de_tributacao"))}
            for r in _list(est.get("regimes_tributarios")) if isinstance(r, dict)
        ] if "regimes_tributarios" in est else None,
    )


def _phone(ddd: Any, number: Any) -> str | None:
    number = n.digits(number)
    return (n.digits(ddd) or "") + number if number else None


def _partner(partner: dict) -> dict:
    qualification = _dict(partner.get("qualificacao_socio"))
    representative_qualification = _dict(partner.get("qualificacao_representante"))
    tipo = n.text(partner.get("tipo"))
    return {
        "nome": n.text(partner.get("nome")),
        "tipo": TIPOS_SOCIO.get(n.ascii_upper(tipo)) if tipo else None,
        "documento_mascarado": n.text(partner.get("cpf_cnpj_socio")),
        "qualificacao": n.qualificacao(qualification.get("id"), qualification.get("descricao")),
        "data_entrada": n.iso_date(partner.get("data_entrada")),
        "faixa_etaria": n.faixa_etaria(None, partner.get("faixa_etaria")),
        "pais": n.text(_dict(partner.get("pais")).get("nome")),
        "representante_legal": n.representante(
            partner.get("cpf_representante_legal"), partner.get("nome_representante"),
            n.qualificacao(representative_qualification.get("id"), representative_qualification.get("descricao"))
            if representative_qualification else None,
        ),
    }
