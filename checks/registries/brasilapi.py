"""BrasilAPI (`GET /api/cnpj/v1/{cnpj}`) and minha-receita (`GET /{cnpj}`): one source, two doors.

BrasilAPI proxies minhareceita.org and returns its payload unchanged, so both share a
normalizer, fail together and count as ONE source for the "confirmed not found" rule.
minha-receita's capital is a float32 upstream (6983568523.86 arrives as 6983568384): the
record marks it inexact. Its privacy mode already masks CPFs in names and drops e-mails.
The data date comes from minha-receita's `/updated` (cached in Redis for hours: it changes monthly).
"""

from __future__ import annotations

from typing import Any

import httpx
from django.conf import settings

from core.redis_clients import redis_client

from . import normalize as n
from .base import RegistryClient, logger
from .limits import redis_key

UPDATED_TTL = 6 * 3600
UPDATED_RETRY_TTL = 300  # after a failed /updated, try again this much later


class BrasilApiClient(RegistryClient):
    name = "brasilapi"
    base_url_setting = "BRASILAPI_BASE_URL"

    def url(self, cnpj: str) -> str:
        return f"{self.base_url}/api/cnpj/v1/{cnpj}"

    def is_company(self, payload: dict) -> bool:
        return bool(payload.get("cnpj")) and bool(payload.get("razao_social"))

    def normalize(self, payload: dict, *, cnpj: str, fetched_at: str) -> dict:
        return normalize_minhareceita(payload, cnpj=cnpj, fetched_at=fetched_at, provider=self.name,
                                      source_updated_at=minhareceita_updated())


class MinhaReceitaClient(BrasilApiClient):
    name = "minhareceita"
    base_url_setting = "MINHARECEITA_BASE_URL"

    def url(self, cnpj: str) -> str:
        return f"{self.base_url}/{cnpj}"


def minhareceita_updated() -> str | None:
    """The date of the Receita dump minha-receita serves (`/updated`: "2026-09" or "2026-09-05"), best effort."""
    key = redis_key("minhareceita", "updated")
    client = redis_client(decode=False)
    cached = client.get(key)
    if cached is not None:
        return cached.decode() or None
    found = None
    try:
        response = MinhaReceitaClient().get(f"{settings.MINHARECEITA_BASE_URL.rstrip('/')}/updated")
        if response.status_code == 200:
            found = n.iso_date(response.json().get("message"))
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        logger.info("minhareceita /updated failed error=%s", type(exc).__name__)
    client.set(key, found or "", ex=UPDATED_TTL if found else UPDATED_RETRY_TTL)
    return found


def normalize_minhareceita(payload: dict, *, cnpj: str, fetched_at: str, provider: str,
                           source_updated_at: str | None) -> dict:
    matriz = n.integer(payload.get("identificador_matriz_filial"))
    regime = payload.get("regime_tributario")
    return n.company_record(
        cnpj=n.payload_cnpj(payload.get("cnpj"), cnpj),
        provider=provider,
        fetched_at=fetched_at,
        source_updated_at=source_updated_at,
        is_matriz={1: True, 2: False}.get(matriz),
        razao_social=n.text(payload.get("razao_social")),
        nome_fantasia=n.text(payload.get("nome_fantasia")),
        situacao=n.situacao(
            payload.get("situacao_cadastral") or payload.get("descricao_situacao_cadastral"),
            since=payload.get("data_situacao_cadastral"),
            motivo=n.motivo(payload.get("motivo_situacao_cadastral"),
                            payload.get("descricao_motivo_situacao_cadastral")),
        ),
        situacao_especial=n.situacao_especial(payload.get("situacao_especial"), payload.get("data_situacao_especial")),
        data_inicio_atividade=n.iso_date(payload.get("data_inicio_atividade")),
        natureza_juridica=n.natureza(payload.get("codigo_natureza_juridica"), payload.get("natureza_juridica")),
        porte=n.porte(payload.get("codigo_porte"), payload.get("porte") or payload.get("descricao_porte")),
        capital_social=n.decimal_string(payload.get("capital_social")),
        capital_social_exact=False,
        cnae_principal=n.cnae(payload.get("cnae_fiscal"), payload.get("cnae_fiscal_descricao")),
        cnaes_secundarios=[c for c in (n.cnae(a.get("codigo"), a.get("descricao"))
                                       for a in _list(payload.get("cnaes_secundarios")) if isinstance(a, dict)) if c],
        endereco=n.endereco(
            tipo_logradouro=payload.get("descricao_tipo_de_logradouro"), logradouro=payload.get("logradouro"),
            numero=payload.get("numero"), complemento=payload.get("complemento"), bairro=payload.get("bairro"),
            cep=payload.get("cep"), municipio=payload.get("municipio"),
            codigo_municipio_ibge=payload.get("codigo_municipio_ibge"), uf=payload.get("uf"),
            pais=payload.get("pais"), cidade_exterior=payload.get("nome_cidade_no_exterior"),
        ),
        contato={"telefones": n.phones(payload.get("ddd_telefone_1"), payload.get("ddd_telefone_2")),
                 "fax": n.digits(payload.get("ddd_fax")), "email": n.text(payload.get("email"))},
        simples=n.optante(payload.get("opcao_pelo_simples"), payload.get("data_opcao_pelo_simples"),
                          payload.get("data_exclusao_do_simples")),
        mei=n.optante(payload.get("opcao_pelo_mei"), payload.get("data_opcao_pelo_mei"),
                      payload.get("data_exclusao_do_mei")),
        qsa=[_partner(p) for p in _list(payload.get("qsa")) if isinstance(p, dict)],
        regime_tributario=[
            {"ano": n.integer(r.get("ano")), "forma_de_tributacao": n.text(r.get("forma_de_tributacao"))}
            for r in regime if isinstance(r, dict)
        ] if isinstance(regime, list) else None,
    )


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _partner(partner: dict) -> dict:
    representative_code = n.integer(partner.get("codigo_qualificacao_representante_legal"))
    return {
        "nome": n.text(partner.get("nome_socio")),
        "tipo": n.TIPOS_SOCIO.get(n.integer(partner.get("identificador_de_socio"))),
        "documento_mascarado": n.text(partner.get("cnpj_cpf_do_socio")),
        "qualificacao": n.qualificacao(partner.get("codigo_qualificacao_socio"), partner.get("qualificacao_socio")),
        "data_entrada": n.iso_date(partner.get("data_entrada_sociedade")),
        "faixa_etaria": n.faixa_etaria(partner.get("codigo_faixa_etaria"), partner.get("faixa_etaria")),
        "pais": n.text(partner.get("pais")),
        "representante_legal": n.representante(
            partner.get("cpf_representante_legal"), partner.get("nome_representante_legal"),
            n.qualificacao(representative_code, partner.get("qualificacao_representante_legal"))
            if representative_code else None,
        ),
    }
