"""LGPD masking of registry data (CHECKS-RESEARCH §4.2), applied while a payload is normalized.

- Partner CPFs arrive *descaracterizados* by the Receita (`***456789**`): they are kept exactly
  as received, never completed; a full CPF (which no provider should send) is masked the same way.
- A full CPF inside a company name (common for sole proprietors and MEIs: "JOSE DA SILVA
  12345678901") is masked the way minha-receita (hence BrasilAPI) already does, `***45678***`,
  so a record reads the same whichever provider it came from.
- Personal e-mail is dropped: every e-mail of a natural-person company, and webmail addresses
  (gmail, hotmail, …) of any company, which belong to a person rather than to the business.
- Natural-person companies (Empresário Individual incl. MEI, 4xxx natures, any nature whose
  name says "individual", as minha-receita's privacy mode does) lose their street address and
  phones: bairro, CEP, município and UF stay.
"""

from __future__ import annotations

import re
from typing import Any

# 11 digits (optionally written 000.000.000-00) not touching other digits.
_CPF_IN_TEXT = re.compile(r"(?<!\d)(?:\d{11}|\d{3}\.\d{3}\.\d{3}-\d{2})(?!\d)")
_FULL_CPF = re.compile(r"\d{11}|\d{3}\.\d{3}\.\d{3}-\d{2}")
# The Receita's shape for a partner without a representative: no CPF at all.
CPF_NOT_INFORMED = "***000000**"
PESSOA_NATURAL_NATUREZAS = frozenset({"2135"})
PERSONAL_EMAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "hotmail.com", "hotmail.com.br", "outlook.com", "outlook.com.br", "live.com",
    "msn.com", "yahoo.com", "yahoo.com.br", "ymail.com", "icloud.com", "me.com", "mac.com", "aol.com",
    "bol.com.br", "uol.com.br", "terra.com.br", "ig.com.br", "globo.com", "globomail.com", "r7.com",
    "zipmail.com.br", "protonmail.com", "proton.me", "gmx.com", "mail.com",
})
# Address fields of a natural person's company that point at a home (minha-receita's privacy mode).
STREET_FIELDS = ("tipo_logradouro", "logradouro", "numero", "complemento")


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def mask_cpf_in_text(text: str | None) -> str | None:
    """Every full CPF inside `text` as `***` + its digits 4–8 + `***` (minha-receita's shape)."""
    if not text:
        return text
    return _CPF_IN_TEXT.sub(lambda match: f"***{_digits(match.group())[3:8]}***", text)


def mask_partner_document(document: str | None) -> str | None:
    """A partner's document as the Receita publishes it: masked CPFs unchanged, a CNPJ (a company) unchanged,
    a full CPF masked to `***456789**`, "not informed" (`***000000**`, empty) as None."""
    if document is None:
        return None
    document = document.strip()
    if not document or document == CPF_NOT_INFORMED:
        return None
    if _FULL_CPF.fullmatch(document):
        digits = _digits(document)
        return f"***{digits[3:9]}**"
    return document


def is_pessoa_natural(natureza_code: str | None, natureza_label: str | None = None, *,
                      mei: bool | None = None) -> bool:
    """Whether the company is a natural person for data-protection purposes."""
    code = (natureza_code or "").strip()
    if code in PESSOA_NATURAL_NATUREZAS or (len(code) == 4 and code.startswith("4")):
        return True
    if natureza_label and "individual" in natureza_label.lower():
        return True
    return bool(mei)


def is_personal_email(email: str | None, *, pessoa_natural: bool) -> bool:
    if not email:
        return False
    domain = email.rsplit("@", 1)[-1].strip().lower()
    return pessoa_natural or domain in PERSONAL_EMAIL_DOMAINS


def company_email(email: str | None, *, pessoa_natural: bool) -> str | None:
    """The e-mail to keep: None when it is personal (or empty), else lowercased."""
    email = (email or "").strip()
    if not email or "@" not in email or is_personal_email(email, pessoa_natural=pessoa_natural):
        return None
    return email.lower()


def reduce_address(endereco: dict[str, Any] | None) -> dict[str, Any] | None:
    """A natural person's address without street, number and complement (neighbourhood, CEP, city, UF stay)."""
    if endereco is None:
        return None
    return {**endereco, **dict.fromkeys(STREET_FIELDS)}


def mask_record(record: dict[str, Any]) -> dict[str, Any]:
    """A normalized company record (checks.registries.normalize) with every rule above applied.

    Idempotent: masking a masked record changes nothing.
    """
    natureza = record.get("natureza_juridica") or {}
    mei = (record.get("mei") or {}).get("optante")
    pessoa_natural = is_pessoa_natural(natureza.get("code"), natureza.get("label"), mei=mei)
    masked = dict(record)
    if natureza:
        masked["natureza_juridica"] = {**natureza, "pessoa_natural": pessoa_natural}
    masked["razao_social"] = mask_cpf_in_text(record.get("razao_social"))
    masked["nome_fantasia"] = mask_cpf_in_text(record.get("nome_fantasia"))
    contato = dict(record.get("contato") or {})
    contato["email"] = company_email(contato.get("email"), pessoa_natural=pessoa_natural)
    if pessoa_natural:
        contato["telefones"] = []
        contato["fax"] = None
        masked["endereco"] = reduce_address(record.get("endereco"))
    masked["contato"] = contato
    if record.get("qsa") is not None:
        masked["qsa"] = [_mask_partner(partner) for partner in record["qsa"]]
    return masked


def _mask_partner(partner: dict[str, Any]) -> dict[str, Any]:
    masked = {**partner, "nome": mask_cpf_in_text(partner.get("nome")),
              "documento_mascarado": mask_partner_document(partner.get("documento_mascarado"))}
    representative = partner.get("representante_legal")
    if representative:
        masked["representante_legal"] = {
            **representative, "nome": mask_cpf_in_text(representative.get("nome")),
            "documento_mascarado": mask_partner_document(representative.get("documento_mascarado")),
        }
    return masked
