"""LGPD masking rules (CHECKS-RESEARCH §4.2) as named functions, and on whole records."""

from __future__ import annotations

import pytest

from checks import lgpd


@pytest.mark.parametrize(("text", "masked"), [
    # minha-receita's TestMaskCPF vectors
    ("João Silva 12345678901", "João Silva ***45678***"),
    ("Empresa-12345678901", "Empresa-***45678***"),
    ("12345678901", "***45678***"),
    ("Empresa123456789012", "Empresa123456789012"),  # 12 digits: not a CPF
    ("Test 123456-78901", "Test 123456-78901"),
    ("1234567890", "1234567890"),  # 10 digits
    # a formatted CPF, and one in the middle of the name
    ("MARIA SOUZA 123.456.789-01", "MARIA SOUZA ***45678***"),
    ("JOSE 12345678901 ME", "JOSE ***45678*** ME"),
    ("GLOBO COMUNICACAO E PARTICIPACOES S/A", "GLOBO COMUNICACAO E PARTICIPACOES S/A"),
    ("LOJA 27865757000102", "LOJA 27865757000102"),  # a CNPJ (14 digits) is not personal data
    ("", ""),
    (None, None),
])
def test_mask_cpf_in_text(text, masked):
    assert lgpd.mask_cpf_in_text(text) == masked


def test_masking_a_name_twice_changes_nothing():
    once = lgpd.mask_cpf_in_text("MARIA FICTICIA DA SILVA 12345678909")
    assert once == "MARIA FICTICIA DA SILVA ***45678***"
    assert lgpd.mask_cpf_in_text(once) == once


@pytest.mark.parametrize(("document", "kept"), [
    ("***101637**", "***101637**"),  # as the Receita publishes it: never unmasked
    ("***45678***", "***45678***"),
    ("12345678909", "***456789**"),  # a full CPF (no provider should send one) gets the Receita's mask
    ("123.456.789-09", "***456789**"),
    ("19131243000197", "19131243000197"),  # a company partner's CNPJ is not personal data
    ("***000000**", None),  # "not informed"
    ("", None),
    (None, None),
])
def test_mask_partner_document(document, kept):
    assert lgpd.mask_partner_document(document) == kept


@pytest.mark.parametrize(("code", "label", "mei", "natural"), [
    ("2135", "Empresário (Individual)", None, True),
    ("4090", "Candidato a Cargo Político Eletivo", None, True),
    ("4120", "Produtor Rural (Pessoa Física)", None, True),
    ("2305", "Empresa Individual de Responsabilidade Limitada", None, True),  # minha-receita's "individual" rule
    ("2062", "Sociedade Empresária Limitada", None, False),
    ("2062", "Sociedade Empresária Limitada", True, True),  # MEI
    ("3999", "Associação Privada", False, False),
    (None, None, None, False),
])
def test_is_pessoa_natural(code, label, mei, natural):
    assert lgpd.is_pessoa_natural(code, label, mei=mei) is natural


@pytest.mark.parametrize(("email", "natural", "kept"), [
    ("contato@empresa.com.br", False, "contato@empresa.com.br"),
    ("CONTATO@EMPRESA.COM.BR", False, "contato@empresa.com.br"),
    ("maria.silva@gmail.com", False, None),  # webmail: a person's
    ("fulano@hotmail.com", False, None),
    ("contato@doces.com.br", True, None),  # every e-mail of a natural person
    ("", False, None),
    ("not-an-email", False, None),
    (None, False, None),
])
def test_company_email(email, natural, kept):
    assert lgpd.company_email(email, pessoa_natural=natural) == kept


def test_reduce_address_keeps_neighbourhood_and_city():
    address = {"tipo_logradouro": "RUA", "logradouro": "DAS ACACIAS", "numero": "77", "complemento": "CASA 2",
               "bairro": "JARDIM EXEMPLO", "cep": "01001000", "municipio": "São Paulo",
               "codigo_municipio_ibge": 3550308, "uf": "SP", "pais": "Brasil", "cidade_exterior": None}
    reduced = lgpd.reduce_address(address)
    assert {key: reduced[key] for key in lgpd.STREET_FIELDS} == dict.fromkeys(lgpd.STREET_FIELDS)
    assert (reduced["bairro"], reduced["cep"], reduced["municipio"], reduced["uf"]) == (
        "JARDIM EXEMPLO", "01001000", "São Paulo", "SP")
    assert address["logradouro"] == "DAS ACACIAS"  # the input is not modified
    assert lgpd.reduce_address(None) is None


def _record(**overrides):
    record = {
        "razao_social": "MARIA FICTICIA 12345678909", "nome_fantasia": "DOCES 123.456.789-09",
        "natureza_juridica": {"code": "2135", "label": "Empresário (Individual)", "pessoa_natural": False},
        "endereco": {"tipo_logradouro": "RUA", "logradouro": "X", "numero": "1", "complemento": None,
                     "bairro": "B", "cep": "01001000", "municipio": "M", "codigo_municipio_ibge": None, "uf": "SP",
                     "pais": "Brasil", "cidade_exterior": None},
        "contato": {"telefones": ["11987654321"], "fax": "1133334444", "email": "contato@doces.com.br"},
        "mei": {"optante": True, "desde": None, "excluido_em": None},
        "qsa": [{"nome": "SOCIO", "documento_mascarado": "12345678909",
                 "representante_legal": {"nome": "REP", "documento_mascarado": "***000000**", "qualificacao": None}}],
    }
    record.update(overrides)
    return record


def test_mask_record_for_a_sole_proprietor():
    masked = lgpd.mask_record(_record())
    assert masked["razao_social"] == "MARIA FICTICIA ***45678***"
    assert masked["nome_fantasia"] == "DOCES ***45678***"
    assert masked["natureza_juridica"]["pessoa_natural"] is True
    assert masked["endereco"]["logradouro"] is None and masked["endereco"]["numero"] is None
    assert masked["endereco"]["cep"] == "01001000"
    assert masked["contato"] == {"telefones": [], "fax": None, "email": None}
    assert masked["qsa"][0]["documento_mascarado"] == "***456789**"
    assert masked["qsa"][0]["representante_legal"]["documento_mascarado"] is None
    assert lgpd.mask_record(masked) == masked  # idempotent


def test_mask_record_for_a_company_keeps_its_address_and_business_email():
    record = _record(natureza_juridica={"code": "2062", "label": "Sociedade Empresária Limitada",
                                        "pessoa_natural": False},
                     mei={"optante": False, "desde": None, "excluido_em": None})
    masked = lgpd.mask_record(record)
    assert masked["natureza_juridica"]["pessoa_natural"] is False
    assert masked["endereco"] == record["endereco"]
    assert masked["contato"] == {"telefones": ["11987654321"], "fax": "1133334444", "email": "contato@doces.com.br"}
    assert masked["razao_social"] == "MARIA FICTICIA ***45678***"  # a CPF in any name is masked
