"""Normalized company reports (CHECKS-RESEARCH §3.1, schema v1) built from the research's sample payloads.

Each builder returns a fresh dict, so a test can change it freely. Values are the samples' facts
(Appendix A1–A5), written the way research §3.1 writes them; the shapes §3.1 leaves open follow the choices
documented at the top of checks/signals.py.
"""

from __future__ import annotations

import copy
from typing import Any

# The research computes `idade_dias` at this date; tests evaluate signals as of it too.
TODAY_ISO = "2026-09-20"


def _provenance(provider: str, source_updated_at: str) -> dict[str, Any]:
    return {"provider": provider, "fetched_at": f"{TODAY_ISO}T12:00:00Z", "source_updated_at": source_updated_at,
            "cache_hit": False,
            "attempts": [{"provider": provider, "outcome": "DATA", "http_status": 200, "latency_ms": 412}]}


def _partner(nome: str, documento: str, qualificacao: tuple[int, str], data_entrada: str | None,
             faixa: tuple[int, str] | None, *, tipo: str = "PF", pais: str | None = "Brasil") -> dict[str, Any]:
    return {"nome": nome, "tipo": tipo, "documento_mascarado": documento,
            "qualificacao": {"code": qualificacao[0], "label": qualificacao[1]}, "data_entrada": data_entrada,
            "faixa_etaria": {"code": faixa[0], "label": faixa[1]} if faixa else None, "pais": pais,
            "representante_legal": None}


_DBONE = {
    "schema_version": "1",
    "cnpj": "05525406000101", "cnpj_formatted": "05.525.406/0001-01", "cnpj_raiz": "05525406",
    "cnpj_kind": "numeric", "is_matriz": True, "matriz_cnpj": "05525406000101",
    "razao_social": "DBONE INDUSTRIA E COMERCIO DE BEBIDAS LTDA",
    "nome_fantasia": "TROPICAL SUCOS",
    "situacao": {"code": 2, "label": "ATIVA", "since": "2005-08-06", "motivo": None},
    "situacao_especial": None,
    "data_inicio_atividade": "2003-02-24", "idade_dias": 8610,
    "natureza_juridica": {"code": "2062", "label": "Sociedade Empresária Limitada", "pessoa_natural": False},
    "porte": {"code": "03", "label": "EMPRESA DE PEQUENO PORTE"},
    "capital_social": "400000.00",
    "cnae_principal": {"code": "4639701", "label": "Comércio atacadista de produtos alimentícios em geral"},
    "cnaes_secundarios": [
        {"code": "1033301", "label": "Fabricação de sucos concentrados de frutas, hortaliças e legumes"},
        {"code": "1033302", "label": "Fabricação de sucos de frutas, hortaliças e legumes, exceto concentrados"},
        {"code": "4635401", "label": "Comércio atacadista de água mineral"},
        {"code": "4635403", "label": "Comércio atacadista de bebidas com atividade de fracionamento e "
                                     "acondicionamento associada"},
        {"code": "4637199", "label": "Comércio atacadista especializado em outros produtos alimentícios não "
                                     "especificados anteriormente"},
        {"code": "4723700", "label": "Comércio varejista de bebidas"},
        {"code": "4729699", "label": "Comércio varejista de produtos alimentícios em geral ou especializado em "
                                     "produtos alimentícios não especificados anteriormente"},
    ],
    "endereco": {"tipo_logradouro": "RUA", "logradouro": "SANTA FE", "numero": "240", "complemento": None,
                 "bairro": "VILA PALESTINA", "cep": "29145670", "municipio": "Cariacica",
                 "codigo_municipio_ibge": 3201308, "uf": "ES", "pais": "Brasil"},
    "contato": {"telefones": ["2732861717"], "email": None},
    "simples": {"optante": True, "desde": "2007-07-01", "excluido_em": None},
    "mei": {"optante": False, "desde": None, "excluido_em": None},
    "qsa": [
        _partner("WILLIAM MIRANDA BARCELLOS", "***101637**", (49, "Sócio-Administrador"), "2023-11-08",
                 (3, "21 a 30 anos")),
        _partner("CARLOS ALBERTO DE BONE", "***448267**", (49, "Sócio-Administrador"), "2023-11-08",
                 (7, "61 a 70 anos")),
    ],
    "inscricoes_estaduais": [{"uf": "ES", "numero": "082200904", "ativa": True}],
    "provenance": _provenance("cnpjws", "2026-08-08"),
    "risk": {"level": "LOW", "signals": []},
}

_GLOBO = {
    "schema_version": "1",
    "cnpj": "27865757000102", "cnpj_formatted": "27.865.757/0001-02", "cnpj_raiz": "27865757",
    "cnpj_kind": "numeric", "is_matriz": True, "matriz_cnpj": "27865757000102",
    "razao_social": "GLOBO COMUNICACAO E PARTICIPACOES S/A",
    "nome_fantasia": "TV/REDE/CANAIS/G2C+GLOBO GLOBO.COM GLOBOPLAY",
    "situacao": {"code": 2, "label": "ATIVA", "since": "2005-11-03", "motivo": None},
    "situacao_especial": None,
    "data_inicio_atividade": "1986-01-31", "idade_dias": 14842,
    "natureza_juridica": {"code": "2054", "label": "Sociedade Anônima Fechada", "pessoa_natural": False},
    "porte": {"code": "05", "label": "DEMAIS"},
    "capital_social": "6983568523.86",
    "cnae_principal": {"code": "6021700", "label": "Atividades de televisão aberta"},
    "cnaes_secundarios": [
        {"code": "5911102", "label": "Produção de filmes para publicidade"},
        {"code": "5911199", "label": "Atividades de produção cinematográfica, de vídeos e de programas de "
                                     "televisão não especificadas anteriormente"},
        {"code": "6463800", "label": "Outras sociedades de participação, exceto holdings"},
    ],
    "endereco": {"tipo_logradouro": None, "logradouro": "Rua Lopes Quintas", "numero": "303", "complemento": None,
                 "bairro": "Jardim Botanico", "cep": "22460901", "municipio": "Rio de Janeiro",
                 "codigo_municipio_ibge": 3304557, "uf": "RJ", "pais": "Brasil"},
    "contato": {"telefones": ["2121554552"], "email": None},
    "simples": {"optante": None, "desde": None, "excluido_em": None},
    "mei": {"optante": None, "desde": None, "excluido_em": None},
    "qsa": [
        _partner("PEDRO BORGES GARCIA", "***050187**", (10, "Diretor"), "2024-03-21", (6, "51 a 60 anos")),
        _partner("PAULO DAUDT MARINHO", "***048947**", (10, "Diretor"), "2020-01-16", (5, "41 a 50 anos")),
    ],
    "inscricoes_estaduais": [
        {"uf": "RJ", "numero": "84295760", "ativa": True},
        {"uf": "SP", "numero": "113717433112", "ativa": False},
        {"uf": "BA", "numero": "211426987", "ativa": True},
    ],
    "provenance": _provenance("cnpjws", "2024-06-26"),
    "risk": {"level": "LOW", "signals": []},
}

_OKBR = {
    "schema_version": "1",
    "cnpj": "19131243000197", "cnpj_formatted": "19.131.243/0001-97", "cnpj_raiz": "19131243",
    "cnpj_kind": "numeric", "is_matriz": True, "matriz_cnpj": "19131243000197",
    "razao_social": "OPEN KNOWLEDGE BRASIL",
    "nome_fantasia": None,
    "situacao": {"code": 2, "label": "ATIVA", "since": "2013-10-03", "motivo": None},
    "situacao_especial": None,
    "data_inicio_atividade": "2013-10-03", "idade_dias": 4735,
    "natureza_juridica": {"code": "3999", "label": "Associação Privada", "pessoa_natural": False},
    "porte": {"code": "05", "label": "DEMAIS"},
    "capital_social": "0",
    "cnae_principal": {"code": "9430800", "label": "Atividades de associações de defesa de direitos sociais"},
    "cnaes_secundarios": [
        {"code": "9493600", "label": "Atividades de organizações associativas ligadas à cultura e à arte"},
        {"code": "9499500", "label": "Atividades associativas não especificadas anteriormente"},
        {"code": "8599699", "label": "Outras atividades de ensino não especificadas anteriormente"},
        {"code": "8230001", "label": "Serviços de organização de feiras, congressos, exposições e festas"},
        {"code": "6204000", "label": "Consultoria em tecnologia da informação"},
    ],
    "endereco": {"tipo_logradouro": "AVENIDA", "logradouro": "PAULISTA 37", "numero": "37", "complemento": "ANDAR 4",
                 "bairro": "BELA VISTA", "cep": "01311902", "municipio": "SAO PAULO",
                 "codigo_municipio_ibge": 3550308, "uf": "SP", "pais": None},
    "contato": {"telefones": ["1123851939"], "email": None},
    "simples": {"optante": None, "desde": None, "excluido_em": None},
    "mei": {"optante": None, "desde": None, "excluido_em": None},
    "qsa": [_partner("HAYDEE SVAB", "***112108**", (16, "Presidente"), "2024-02-27", (5, "Entre 41 a 50 anos"),
                     pais=None)],
    "inscricoes_estaduais": [],
    "provenance": _provenance("brasilapi", "2026-09-01"),
    "risk": {"level": "LOW", "signals": []},
}

_SERPRO_FILIAL = {
    "schema_version": "1",
    "cnpj": "33683111000280", "cnpj_formatted": "33.683.111/0002-80", "cnpj_raiz": "33683111",
    "cnpj_kind": "numeric", "is_matriz": False, "matriz_cnpj": "33683111000107",
    "razao_social": "SERVICO FEDERAL DE PROCESSAMENTO DE DADOS (SERPRO)",
    "nome_fantasia": "REGIONAL BRASILIA-DF",
    "situacao": {"code": 2, "label": "ATIVA", "since": "2004-05-22", "motivo": None},
    "situacao_especial": None,
    "data_inicio_atividade": "1967-06-30", "idade_dias": 21632,
    "natureza_juridica": {"code": "2011", "label": "Empresa Pública", "pessoa_natural": False},
    "porte": {"code": "05", "label": "DEMAIS"},
    "capital_social": "1061004800",
    "cnae_principal": {"code": "6204000", "label": "Consultoria em tecnologia da informação"},
    "cnaes_secundarios": [
        {"code": "6201501", "label": "Desenvolvimento de programas de computador sob encomenda"},
        {"code": "6202300", "label": "Desenvolvimento e licenciamento de programas de computador customizáveis"},
        {"code": "6203100", "label": "Desenvolvimento e licenciamento de programas de computador não-customizáveis"},
        {"code": "6209100", "label": "Suporte técnico, manutenção e outros serviços em tecnologia da informação"},
        {"code": "6311900", "label": "Tratamento de dados, provedores de serviços de aplicação e serviços de "
                                     "hospedagem na internet"},
    ],
    "endereco": {"tipo_logradouro": "AVENIDA", "logradouro": "L2 SGAN", "numero": "601", "complemento": "MODULO G",
                 "bairro": "ASA NORTE", "cep": "70836900", "municipio": "BRASILIA",
                 "codigo_municipio_ibge": 5300108, "uf": "DF", "pais": None},
    "contato": {"telefones": [], "email": None},
    "simples": {"optante": None, "desde": None, "excluido_em": None},
    "mei": {"optante": None, "desde": None, "excluido_em": None},
    "qsa": [
        _partner("ANDRE DE CESERO", "***220050**", (10, "Diretor"), "2016-06-16", (6, "Entre 51 a 60 anos"),
                 pais=None),
        _partner("ANTONIO DE PADUA FERREIRA PASSOS", "***595901**", (10, "Diretor"), "2016-12-08",
                 (7, "Entre 61 a 70 anos"), pais=None),
        _partner("WILSON BIANCARDI COURY", "***414127**", (10, "Diretor"), "2019-06-18", (8, "Entre 71 a 80 anos"),
                 pais=None),
        _partner("GILENO GURJAO BARRETO", "***099595**", (16, "Presidente"), "2020-02-03",
                 (5, "Entre 41 a 50 anos"), pais=None),
        _partner("RICARDO CEZAR DE MOURA JUCA", "***989951**", (10, "Diretor"), "2020-05-12",
                 (5, "Entre 41 a 50 anos"), pais=None),
        _partner("ANTONINO DOS SANTOS GUERRA NETO", "***073447**", (5, "Administrador"), "2019-02-11",
                 (7, "Entre 61 a 70 anos"), pais=None),
    ],
    "inscricoes_estaduais": [],
    "provenance": _provenance("minhareceita", "2026-09-01"),
    "risk": {"level": "LOW", "signals": []},
}

# The MEI BAIXADA outline of Appendix A3. Its owner's name and CPF are personal data the research does not
# reproduce: the name here is a placeholder already masked as research §4.2 asks. The provider sent an empty
# situação; the outline's heading says BAIXADA, dated by `data_situacao_cadastral`.
_MEI_BAIXADA = {
    "schema_version": "1",
    "cnpj": "15603140000121", "cnpj_formatted": "15.603.140/0001-21", "cnpj_raiz": "15603140",
    "cnpj_kind": "numeric", "is_matriz": True, "matriz_cnpj": "15603140000121",
    "razao_social": "FULANO DE TAL ***45678***",
    "nome_fantasia": None,
    "situacao": {"code": 8, "label": "BAIXADA", "since": "2018-02-01", "motivo": None},
    "situacao_especial": None,
    "data_inicio_atividade": "2012-05-27", "idade_dias": 5230,
    "natureza_juridica": {"code": "2135", "label": "Empresário (Individual)", "pessoa_natural": True},
    "porte": {"code": "01", "label": "MICRO EMPRESA"},
    "capital_social": "1.00",
    "cnae_principal": None,
    "cnaes_secundarios": [],
    "endereco": {"tipo_logradouro": None, "logradouro": None, "numero": None, "complemento": None,
                 "bairro": None, "cep": None, "municipio": None, "codigo_municipio_ibge": None, "uf": None,
                 "pais": None},
    "contato": {"telefones": [], "email": None},
    "simples": {"optante": False, "desde": None, "excluido_em": None},
    "mei": {"optante": False, "desde": "2012-05-27", "excluido_em": "2018-02-01"},
    "qsa": [],
    "inscricoes_estaduais": [],
    "provenance": _provenance("cnpjws", "2026-08-08"),
    "risk": {"level": "LOW", "signals": []},
}


def dbone_report() -> dict[str, Any]:
    """A3 (publica.cnpj.ws): an active LTDA with two partner-administrators. No signal fires on it today."""
    return copy.deepcopy(_DBONE)


def globo_report() -> dict[str, Any]:
    """A4 (publica.cnpj.ws, trimmed) with A5's facts: the §3.1 example itself; its source data is from 2024."""
    return copy.deepcopy(_GLOBO)


def okbr_report() -> dict[str, Any]:
    """A1 (BrasilAPI / minha-receita): an association (natureza 3999) with capital 0 and one partner."""
    return copy.deepcopy(_OKBR)


def serpro_filial_report() -> dict[str, Any]:
    """A2 (minha-receita): an active branch of an Empresa Pública, six officers."""
    return copy.deepcopy(_SERPRO_FILIAL)


def serpro_matriz_report(*, situacao_code: int = 2, situacao_label: str = "ATIVA") -> dict[str, Any]:
    """SERPRO's head office, built from A2's company facts (A2 is a branch; the head office is 0001-07)."""
    report = copy.deepcopy(_SERPRO_FILIAL)
    report.update({"cnpj": "33683111000107", "cnpj_formatted": "33.683.111/0001-07", "is_matriz": True,
                   "nome_fantasia": None})
    report["situacao"] = {"code": situacao_code, "label": situacao_label, "since": "2004-05-22", "motivo": None}
    return report


def mei_baixada_report() -> dict[str, Any]:
    """A3's MEI BAIXADA outline: natureza 2135, capital 1.00, empty QSA, MEI excluded on 2018-02-01."""
    return copy.deepcopy(_MEI_BAIXADA)
