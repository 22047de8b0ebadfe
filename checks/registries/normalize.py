"""One company record whatever the provider (CHECKS-RESEARCH §2.6, §3.1), as plain JSON values.

A record is a dict of str / int / bool / None / list / dict only, so it goes into a JSONField
as is and two records diff key by key. Every key is always present (None when the provider
does not say); lists the provider does not give at all are None, not [] (None = unknown,
[] = known to be empty). Schema version "1":

    schema_version        "1"
    cnpj                  "27865757000102" (canonical), cnpj_formatted "27.865.757/0001-02"
    cnpj_raiz             "27865757", cnpj_kind "numeric" | "alphanumeric"
    is_matriz             bool | None;  matriz_cnpj: this CNPJ, or the conventional 0001 of its raiz
    razao_social, nome_fantasia       str | None (full CPFs inside them masked, see checks.lgpd)
    situacao              {"code": 1|2|3|4|8|None, "label": "NULA|ATIVA|SUSPENSA|INAPTA|BAIXADA"|None,
                           "since": "YYYY-MM-DD"|None, "motivo": {"code": int|None, "label": str}|None}
    situacao_especial     {"label": str, "since": "YYYY-MM-DD"|None} | None
    data_inicio_atividade "YYYY-MM-DD" | None
    natureza_juridica     {"code": "2062", "label": str|None, "pessoa_natural": bool} | None
    porte                 {"code": "00|01|03|05",
                           "label": "NÃO INFORMADO|MICRO EMPRESA|EMPRESA DE PEQUENO PORTE|DEMAIS"} | None
    capital_social        decimal string "400000.00" | None (0 = not declared → None)
    capital_social_exact  bool: False for BrasilAPI/minha-receita (a float32 upstream rounds large values)
    cnae_principal        {"code": "0220903" (7 digits, zero-padded), "label": str|None} | None
    cnaes_secundarios     [{"code", "label"}]
    endereco              {"tipo_logradouro", "logradouro", "numero", "complemento", "bairro",
                           "cep": 8 digits, "municipio", "codigo_municipio_ibge": int|None, "uf", "pais",
                           "cidade_exterior"}  (street fields None for natural persons, see checks.lgpd)
    contato               {"telefones": ["2121554552"], "fax": str|None, "email": str|None}
    simples, mei          {"optante": bool|None, "desde": date|None, "excluido_em": date|None}
    qsa                   [{"nome", "tipo": "PF"|"PJ"|"ESTRANGEIRO"|None, "documento_mascarado": "***050187**"|None,
                            "qualificacao": {"code": int|None, "label": str|None}, "data_entrada": date|None,
                            "faixa_etaria": {"code": 0-9, "label": str}|None, "pais": str|None,
                            "representante_legal": {"nome", "documento_mascarado", "qualificacao"}|None}]
    inscricoes_estaduais  [{"uf", "numero", "ativa"}] | None (cnpj.ws only)
    regime_tributario     [{"ano": int, "forma_de_tributacao": str}] | None
    provenance            {"provider": "cnpjws|brasilapi|minhareceita|receitaws",
                           "fetched_at": "2026-09-20T12:00:00Z", "source_updated_at": "YYYY-MM-DD"|None}

Derived, time-dependent values (company age) and risk signals are left to the report layer.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .. import cnpj as cnpj_id
from ..lgpd import mask_record

SCHEMA_VERSION = "1"
SITUACOES = {1: "NULA", 2: "ATIVA", 3: "SUSPENSA", 4: "INAPTA", 8: "BAIXADA"}
PORTES = {"00": "NÃO INFORMADO", "01": "MICRO EMPRESA", "03": "EMPRESA DE PEQUENO PORTE", "05": "DEMAIS"}
_PORTE_WORDS = {"NAO INFORMADO": "00", "MICRO EMPRESA": "01", "ME": "01", "MICROEMPRESA": "01",
                "EMPRESA DE PEQUENO PORTE": "03", "EPP": "03", "DEMAIS": "05"}
FAIXAS_ETARIAS = {0: "Não se aplica", 1: "0 a 12 anos", 2: "13 a 20 anos", 3: "21 a 30 anos", 4: "31 a 40 anos",
                  5: "41 a 50 anos", 6: "51 a 60 anos", 7: "61 a 70 anos", 8: "71 a 80 anos",
                  9: "Maiores de 80 anos"}
_FAIXA_BY_LOWER_BOUND = {0: 1, 13: 2, 21: 3, 31: 4, 41: 5, 51: 6, 61: 7, 71: 8}
UFS = frozenset("AC AL AM AP BA CE DF ES GO MA MG MS MT PA PB PE PI PR RJ RN RO RR RS SC SE SP TO".split())
TIPOS_SOCIO = {1: "PJ", 2: "PF", 3: "ESTRANGEIRO"}


def text(value: Any) -> str | None:
    """A trimmed string, or None for null / empty."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def digits(value: Any) -> str | None:
    found = "".join(c for c in str(value or "") if c in "0123456789")
    return found or None


def integer(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def ascii_upper(value: str) -> str:
    return unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().upper().strip()


def iso_date(value: Any) -> str | None:
    """`YYYY-MM-DD` from ISO dates or datetimes, `dd/mm/aaaa`, or `YYYY-MM` (its first day)."""
    value = text(value)
    if value is None:
        return None
    for pattern, order in ((r"(\d{4})-(\d{2})-(\d{2})", "ymd"), (r"(\d{2})/(\d{2})/(\d{4})", "dmy"),
                           (r"(\d{4})-(\d{2})", "ym")):
        match = re.match(pattern, value)
        if match:
            parts = match.groups()
            year, month, day = {"ymd": parts, "dmy": parts[::-1], "ym": (*parts, "01")}[order]
            try:
                return date(int(year), int(month), int(day)).isoformat()
            except ValueError:
                return None
    return None


def decimal_string(value: Any) -> str | None:
    """A money amount as a 2-place decimal string; 0 (not declared) and garbage as None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0:
        return None
    return str(amount.quantize(Decimal("0.01")))


def cnae(code: Any, label: Any) -> dict | None:
    """A CNAE subclass as 7 digits (ints lose the leading zero: 220903 → "0220903"); all-zero = none."""
    found = digits(code)
    if not found or set(found) == {"0"}:
        return None
    return {"code": found.zfill(7), "label": text(label)}


def situacao(code: Any, *, since: Any = None, motivo: dict | None = None) -> dict:
    """From a Receita code (2) or a word ("Ativa", "ATIVA"); unknown or empty gives code None."""
    number = integer(code)
    if number is None and text(code):
        word = ascii_upper(str(code))
        number = next((key for key, label in SITUACOES.items() if label == word), None)
    return {"code": number if number in SITUACOES else None, "label": SITUACOES.get(number),
            "since": iso_date(since), "motivo": motivo}


def motivo(code: Any, label: Any) -> dict | None:
    number = integer(code)
    if number == 0 or (number is None and not text(label)):
        return None  # 0 is "SEM MOTIVO"
    return {"code": number, "label": text(label)}


def situacao_especial(label: Any, since: Any) -> dict | None:
    label = text(label)
    return {"label": label, "since": iso_date(since)} if label else None


def natureza(code: Any, label: Any) -> dict | None:
    found = digits(code)
    if not found:
        return None
    return {"code": found.zfill(4), "label": text(label), "pessoa_natural": False}  # set by lgpd.mask_record


def porte(code: Any = None, label: Any = None) -> dict | None:
    found = digits(code)
    key = found.zfill(2) if found else _PORTE_WORDS.get(ascii_upper(str(label or "")))
    if key not in PORTES:
        return None
    return {"code": key, "label": PORTES[key]}


def faixa_etaria(code: Any = None, label: Any = None) -> dict | None:
    number = integer(code)
    if number is None and text(label):
        words = ascii_upper(str(label))
        bounds = re.search(r"(\d+)\s*A\s*\d+", words)
        if bounds:
            number = _FAIXA_BY_LOWER_BOUND.get(int(bounds.group(1)))
        elif "80" in words:
            number = 9
        elif "NAO SE APLICA" in words:
            number = 0
    if number not in FAIXAS_ETARIAS:
        return None
    return {"code": number, "label": FAIXAS_ETARIAS[number]}


def qualificacao(code: Any, label: Any) -> dict:
    return {"code": integer(code), "label": text(label)}


def representante(document: Any, name: Any, qualification: dict | None) -> dict | None:
    document, name = text(document), text(name)
    if not name and (not document or document == "***000000**"):
        return None
    return {"nome": name, "documento_mascarado": document, "qualificacao": qualification}


def optante(flag: Any, since: Any, until: Any) -> dict:
    if isinstance(flag, str):
        flag = {"SIM": True, "S": True, "NAO": False, "N": False}.get(ascii_upper(flag))
    return {"optante": flag if isinstance(flag, bool) else None, "desde": iso_date(since),
            "excluido_em": iso_date(until)}


def phones(*numbers: Any) -> list[str]:
    """Digits of each phone ("(21) 2155-4551" → "2121554551"), without blanks, zeros or repeats."""
    found: list[str] = []
    for number in numbers:
        value = digits(number)
        if value and set(value) != {"0"} and value not in found:
            found.append(value)
    return found


def endereco(*, tipo_logradouro: Any = None, logradouro: Any = None, numero: Any = None, complemento: Any = None,
             bairro: Any = None, cep: Any = None, municipio: Any = None, codigo_municipio_ibge: Any = None,
             uf: Any = None, pais: Any = None, cidade_exterior: Any = None) -> dict:
    uf = text(uf)
    uf = uf.upper() if uf else None
    return {
        "tipo_logradouro": text(tipo_logradouro), "logradouro": text(logradouro), "numero": text(numero),
        "complemento": text(complemento), "bairro": text(bairro), "cep": digits(cep),
        "municipio": text(municipio), "codigo_municipio_ibge": integer(codigo_municipio_ibge), "uf": uf,
        # Mirrors of the Receita dump leave the country empty for addresses in Brazil.
        "pais": text(pais) or ("Brasil" if uf in UFS else None),
        "cidade_exterior": text(cidade_exterior),
    }


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def company_record(*, cnpj: str, provider: str, fetched_at: str, source_updated_at: str | None,
                   is_matriz: bool | None, **fields: Any) -> dict:
    """The full record: identifiers derived from `cnpj`, `fields` over the defaults, LGPD masking applied."""
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "cnpj": cnpj,
        "cnpj_formatted": cnpj_id.format_cnpj(cnpj),
        "cnpj_raiz": cnpj_id.cnpj_raiz(cnpj),
        "cnpj_kind": cnpj_id.cnpj_kind(cnpj),
        "is_matriz": is_matriz,
        "matriz_cnpj": cnpj if is_matriz else cnpj_id.matriz_cnpj(cnpj),
        "razao_social": None,
        "nome_fantasia": None,
        "situacao": situacao(None),
        "situacao_especial": None,
        "data_inicio_atividade": None,
        "natureza_juridica": None,
        "porte": None,
        "capital_social": None,
        "capital_social_exact": True,
        "cnae_principal": None,
        "cnaes_secundarios": [],
        "endereco": endereco(),
        "contato": {"telefones": [], "fax": None, "email": None},
        "simples": optante(None, None, None),
        "mei": optante(None, None, None),
        "qsa": None,
        "inscricoes_estaduais": None,
        "regime_tributario": None,
    }
    unknown = set(fields) - set(record)
    if unknown:
        raise TypeError(f"not in the record schema: {sorted(unknown)}")
    record.update(fields)
    record["provenance"] = {"provider": provider, "fetched_at": fetched_at, "source_updated_at": source_updated_at}
    return mask_record(record)


def payload_cnpj(value: Any, requested: str) -> str:
    """The canonical CNPJ a payload is about (providers echo it, sometimes masked); the requested one otherwise."""
    found = cnpj_id.validate(str(value or ""))
    return found.cnpj or requested
