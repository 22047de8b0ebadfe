"""The registry clients and `registry_lookup` against a local fake of the four registries (tests/fake_registries.py).

No database. Redis is real (the limiter, cooldowns and breakers are Lua scripts there); each
test gets its own key namespace (CHECKS_REDIS_PREFIX), so runs never see each other's counters.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from checks.registries import (
    CIRCUIT_OPEN,
    ERROR,
    FOUND,
    LOOKUP_FAILED,
    LOOKUP_FOUND,
    LOOKUP_INVALID,
    LOOKUP_NOT_FOUND,
    LOOKUP_THROTTLED,
    NOT_FOUND,
    RATE_LIMITED,
    THROTTLED,
    UNAVAILABLE,
    UNSUPPORTED,
    registry_lookup,
)
from checks.registries.brasilapi import BrasilApiClient, MinhaReceitaClient
from checks.registries.cnpjws import CnpjWsClient
from checks.registries.limits import (
    CircuitBreaker,
    cooldown_remaining,
    cooldown_set,
    parse_limits,
    rate_limit_acquire,
    redis_client,
)
from checks.registries.receitaws import ReceitaWsClient

from .fake_registries import (
    INVALID,
    NON_JSON,
    PROVIDERS,
    RATE_LIMIT,
    RECEITAWS_ERROR,
    SERVER_ERROR,
    STATUS,
    TIMEOUT,
    FakeRegistries,
    load_json,
)
from .fake_registries import NOT_FOUND as FAKE_NOT_FOUND

DBONE = "05525406000101"  # cnpj.ws sample (A3)
GLOBO = "27865757000102"  # cnpj.ws (A4) and ReceitaWS (A5) samples
OKBR = "19131243000197"  # BrasilAPI / minha-receita sample (A1)
SERPRO_FILIAL = "33683111000280"  # minha-receita sample (A2)
MEI = "99123456000106"  # synthetic sole proprietor (cnpj.ws shape)
ALNUM = "12ABC34501DE35"  # synthetic alphanumeric (minha-receita shape)
UNKNOWN = "94580730000152"  # checksum-valid, registered nowhere
CLIENTS = {"cnpjws": CnpjWsClient, "brasilapi": BrasilApiClient, "minhareceita": MinhaReceitaClient,
           "receitaws": ReceitaWsClient}
KNOWN = {"cnpjws": DBONE, "brasilapi": OKBR, "minhareceita": SERPRO_FILIAL, "receitaws": GLOBO}


@pytest.fixture
def registries(settings):
    """The fake registries, every client pointed at them, no rate limit, short timeouts, a fresh Redis namespace."""
    settings.CHECKS_REDIS_PREFIX = f"checks-test-{uuid.uuid4().hex[:12]}"
    settings.CHECKS_RATE_LIMITS = dict.fromkeys(PROVIDERS, "")
    settings.CHECKS_CONNECT_TIMEOUT = 0.5
    settings.CHECKS_READ_TIMEOUT = 0.5
    settings.CHECKS_COOLDOWN_DEFAULT = 60
    settings.CHECKS_BREAKER_FAILURES = 3
    settings.CHECKS_BREAKER_WINDOW = 60
    settings.CHECKS_BREAKER_COOLDOWN = 120
    with FakeRegistries() as server:
        for name, value in server.settings().items():
            setattr(settings, name, value)
        yield server
    client = redis_client()
    keys = list(client.scan_iter(match=f"{settings.CHECKS_REDIS_PREFIX}:*"))
    if keys:
        client.delete(*keys)


def fetch(provider: str, cnpj: str):
    return CLIENTS[provider]().fetch(cnpj)


def outcomes(result) -> list[tuple[str, str]]:
    return [(attempt.provider, attempt.outcome) for attempt in result.attempts]


def shape(value):
    """The keys of a record, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value and isinstance(value[0], dict) else []
    return None


# ---------------------------------------------------------------- clients and normalization


def test_cnpjws_record(registries):
    answer = fetch("cnpjws", DBONE)
    assert (answer.outcome, answer.http_status) == (FOUND, 200)
    record = answer.record
    assert record["cnpj"] == DBONE and record["cnpj_formatted"] == "05.525.406/0001-01"
    assert record["razao_social"] == "DBONE INDUSTRIA E COMERCIO DE BEBIDAS LTDA"
    assert record["capital_social"] == "400000.00" and record["capital_social_exact"] is True
    assert record["cnae_principal"] == {"code": "4639701",
                                        "label": "Comércio atacadista de produtos alimentícios em geral"}
    assert [c["code"] for c in record["cnaes_secundarios"]][:2] == ["1033301", "1033302"]
    assert record["data_inicio_atividade"] == "2003-02-24"
    assert record["situacao"] == {"code": 2, "label": "ATIVA", "since": "2005-08-06", "motivo": None}
    assert record["natureza_juridica"] == {"code": "2062", "label": "Sociedade Empresária Limitada",
                                           "pessoa_natural": False}
    assert record["porte"] == {"code": "03", "label": "EMPRESA DE PEQUENO PORTE"}
    assert record["simples"] == {"optante": True, "desde": "2007-07-01", "excluido_em": None}
    assert record["mei"] == {"optante": False, "desde": None, "excluido_em": None}
    assert record["endereco"]["logradouro"] == "SANTA FE" and record["endereco"]["cep"] == "29145670"
    assert record["endereco"]["codigo_municipio_ibge"] == 3201308 and record["endereco"]["uf"] == "ES"
    assert record["contato"] == {"telefones": ["2732861717"], "fax": "2732861717", "email": None}
    assert record["qsa"][0] == {
        "nome": "WILLIAM MIRANDA BARCELLOS", "tipo": "PF", "documento_mascarado": "***101637**",
        "qualificacao": {"code": 49, "label": "Sócio-Administrador"}, "data_entrada": "2023-11-08",
        "faixa_etaria": {"code": 3, "label": "21 a 30 anos"}, "pais": "Brasil", "representante_legal": None,
    }
    assert record["inscricoes_estaduais"] == [{"uf": "ES", "numero": "082200904", "ativa": True}]
    assert record["provenance"]["provider"] == "cnpjws"
    assert record["provenance"]["source_updated_at"] == "2026-08-08"
    assert json.loads(json.dumps(record)) == record  # plain JSON values only


def test_cnpjws_matches_the_report_example(registries):
    """§3.1's example report was built from this payload (A4)."""
    record = fetch("cnpjws", GLOBO).record
    assert record["capital_social"] == "6983568523.86"
    assert record["is_matriz"] is True and record["matriz_cnpj"] == GLOBO
    assert record["cnpj_kind"] == "numeric" and record["cnpj_raiz"] == "27865757"
    assert record["situacao"] == {"code": 2, "label": "ATIVA", "since": "2005-11-03", "motivo": None}
    assert record["natureza_juridica"] == {"code": "2054", "label": "Sociedade Anônima Fechada",
                                           "pessoa_natural": False}
    assert record["porte"] == {"code": "05", "label": "DEMAIS"}
    assert record["cnae_principal"] == {"code": "6021700", "label": "Atividades de televisão aberta"}
    assert record["endereco"] == {"tipo_logradouro": None, "logradouro": "Rua Lopes Quintas", "numero": "303",
                                  "complemento": None, "bairro": "Jardim Botanico", "cep": "22460901",
                                  "municipio": "Rio de Janeiro", "codigo_municipio_ibge": 3304557, "uf": "RJ",
                                  "pais": "Brasil", "cidade_exterior": None}
    assert record["contato"]["telefones"] == ["2121554552"]
    assert record["simples"] == {"optante": None, "desde": None, "excluido_em": None}  # cnpj.ws said null
    assert record["qsa"][0]["documento_mascarado"] == "***050187**"
    assert record["qsa"][0]["faixa_etaria"] == {"code": 6, "label": "51 a 60 anos"}
    assert record["inscricoes_estaduais"][0] == {"uf": "RJ", "numero": "84295760", "ativa": True}


def test_brasilapi_record(registries):
    answer = fetch("brasilapi", OKBR)
    assert answer.outcome == FOUND
    record = answer.record
    assert record["razao_social"] == "OPEN KNOWLEDGE BRASIL" and record["nome_fantasia"] is None
    assert record["capital_social"] is None  # 0 means "not declared"
    assert record["capital_social_exact"] is False
    assert record["natureza_juridica"]["code"] == "3999"
    assert record["cnae_principal"]["code"] == "9430800"
    assert record["qsa"][0]["documento_mascarado"] == "***112108**"
    assert record["qsa"][0]["faixa_etaria"] == {"code": 5, "label": "41 a 50 anos"}
    assert record["qsa"][0]["qualificacao"] == {"code": 16, "label": "Presidente"}
    assert record["regime_tributario"][0] == {"ano": 2017, "forma_de_tributacao": "ISENTA DO IRPJ"}
    # The data date of BrasilAPI's source comes from minha-receita's /updated ("2026-09").
    assert record["provenance"] == {"provider": "brasilapi", "fetched_at": record["provenance"]["fetched_at"],
                                    "source_updated_at": "2026-09-01"}
    assert record["provenance"]["fetched_at"].endswith("Z")


def test_minhareceita_branch_record(registries):
    record = fetch("minhareceita", SERPRO_FILIAL).record
    assert record["is_matriz"] is False
    assert record["matriz_cnpj"] == "33683111000107"
    assert record["capital_social"] == "1061004800.00" and record["capital_social_exact"] is False
    assert record["situacao"]["motivo"] is None  # 0 = SEM MOTIVO
    assert record["endereco"]["tipo_logradouro"] == "AVENIDA"
    assert record["contato"]["telefones"] == []
    assert record["regime_tributario"] is None
    assert record["provenance"]["provider"] == "minhareceita"


def test_alphanumeric_record_pads_cnae_and_keeps_float_capital_inexact(registries):
    record = fetch("brasilapi", ALNUM).record
    assert record["cnpj"] == ALNUM and record["cnpj_kind"] == "alphanumeric"
    assert record["cnpj_formatted"] == "12.ABC.345/01DE-35"
    assert record["cnae_principal"]["code"] == "0220903"  # the int 220903 lost its zero upstream
    assert record["cnaes_secundarios"] == [{"code": "0111301", "label": "Cultivo de arroz"}]
    assert record["capital_social"] == "6983568384.00"  # float32 upstream: approximate, and flagged
    assert record["capital_social_exact"] is False
    partner = record["qsa"][0]
    assert partner["tipo"] == "PJ" and partner["documento_mascarado"] == "19131243000197"
    assert partner["representante_legal"]["documento_mascarado"] == "***123456**"


def test_receitaws_record(registries):
    answer = fetch("receitaws", GLOBO)
    assert answer.outcome == FOUND
    record = answer.record
    assert record["data_inicio_atividade"] == "1986-01-31"  # dd/mm/aaaa
    assert record["situacao"]["since"] == "2005-11-03"
    assert record["cnae_principal"] == {"code": "6021700", "label": "Atividades de televisão aberta"}
    assert record["natureza_juridica"]["code"] == "2054"
    assert record["endereco"]["cep"] == "22460901"
    assert record["contato"]["telefones"] == ["2121554551", "2121554552"]
    assert record["simples"]["optante"] is False and record["mei"]["optante"] is False
    assert record["qsa"][0] == {"nome": "PAULO DAUDT MARINHO", "tipo": None, "documento_mascarado": None,
                                "qualificacao": {"code": 10, "label": "Diretor"}, "data_entrada": None,
                                "faixa_etaria": None, "pais": None, "representante_legal": None}
    assert record["provenance"]["source_updated_at"] == "2024-11-06"


def test_exact_capital_agrees_across_decimal_providers(registries):
    """The Decimal regression of §A5: cnpj.ws and ReceitaWS strings agree to the cent (a float32 would not)."""
    cnpjws, receitaws = fetch("cnpjws", GLOBO).record, fetch("receitaws", GLOBO).record
    assert cnpjws["capital_social"] == receitaws["capital_social"] == "6983568523.86"
    for key in ("cnpj", "razao_social", "data_inicio_atividade", "natureza_juridica", "porte", "is_matriz"):
        assert cnpjws[key] == receitaws[key], key
    assert cnpjws["cnae_principal"]["code"] == receitaws["cnae_principal"]["code"]
    assert cnpjws["situacao"]["code"] == receitaws["situacao"]["code"]


def test_every_provider_gives_the_same_record_shape(registries):
    records = [fetch(provider, cnpj).record for provider, cnpj in KNOWN.items()]
    shapes = [shape(record) for record in records]
    # Lists may be empty for one provider: compare the dict keys at every level that exists.
    top = {frozenset(s) for s in shapes}
    assert len(top) == 1
    for key in ("situacao", "endereco", "contato", "simples", "mei", "provenance"):
        assert len({frozenset(s[key]) for s in shapes if isinstance(s[key], dict)}) == 1, key
    partner_keys = {frozenset(s["qsa"][0]) for s in shapes if s["qsa"]}
    assert len(partner_keys) == 1


def test_sole_proprietor_is_masked(registries):
    """A MEI: CPF in its names masked, personal e-mail dropped, home address and phones reduced."""
    raw = load_json(f"cnpjws_mei_{MEI}.json")
    record = fetch("cnpjws", MEI).record
    assert record["razao_social"] == "MARIA FICTICIA DA SILVA ***45678***"
    assert record["nome_fantasia"] == "DOCES DA MARIA ***45678***"
    assert record["natureza_juridica"]["pessoa_natural"] is True
    assert record["contato"] == {"telefones": [], "fax": None, "email": None}
    assert record["endereco"]["logradouro"] is None and record["endereco"]["numero"] is None
    assert record["endereco"]["complemento"] is None
    assert record["endereco"]["cep"] == "01001000" and record["endereco"]["municipio"] == "São Paulo"
    assert record["mei"] == {"optante": True, "desde": "2019-03-01", "excluido_em": None}
    assert record["situacao"]["code"] is None  # cnpj.ws sent "" (sic): unknown, not invented
    text = json.dumps(record, ensure_ascii=False)
    for secret in ("12345678909", raw["estabelecimento"]["email"], raw["estabelecimento"]["logradouro"],
                   raw["estabelecimento"]["telefone1"]):
        assert secret not in text


def test_user_agent_is_sent(registries, settings):
    fetch("cnpjws", DBONE)
    assert registries.requests[-1].headers["user-agent"] == settings.CHECKS_USER_AGENT


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("provider", ["cnpjws", "brasilapi", "minhareceita"])
def test_404_is_not_found(registries, provider):
    answer = fetch(provider, UNKNOWN)
    assert (answer.outcome, answer.http_status, answer.record) == (NOT_FOUND, 404, None)


def test_receitaws_errors_arrive_as_http_200(registries):
    answer = fetch("receitaws", UNKNOWN)  # "CNPJ rejeitado pela Receita Federal"
    assert (answer.outcome, answer.http_status) == (NOT_FOUND, 200)
    registries.fail("receitaws", INVALID)  # "CNPJ inválido"
    assert fetch("receitaws", GLOBO).outcome == UNSUPPORTED
    registries.fail("receitaws", RECEITAWS_ERROR, message="Timeout")
    assert fetch("receitaws", GLOBO).outcome == UNAVAILABLE
    registries.fail("receitaws", RECEITAWS_ERROR, message="Algo inesperado")
    assert fetch("receitaws", GLOBO).outcome == ERROR
    assert fetch("receitaws", GLOBO).outcome == FOUND


@pytest.mark.parametrize("provider", PROVIDERS)
def test_classification(registries, provider):
    cnpj = KNOWN[provider]
    registries.fail(provider, INVALID)
    assert fetch(provider, cnpj).outcome == UNSUPPORTED
    registries.fail(provider, SERVER_ERROR)
    assert (fetch(provider, cnpj).outcome, registries.count(provider)) == (UNAVAILABLE, 2)
    registries.fail(provider, STATUS, status=503, body={"message": "Serviço temporariamente indisponível"})
    assert fetch(provider, cnpj).outcome == UNAVAILABLE
    registries.fail(provider, NON_JSON)
    assert (fetch(provider, cnpj).outcome, fetch(provider, cnpj).outcome) == (UNAVAILABLE, FOUND)
    registries.fail(provider, STATUS, status=403, body={"message": "Forbidden"})
    assert fetch(provider, cnpj).outcome == ERROR
    registries.fail(provider, STATUS, status=200, body={"unexpected": True})
    assert fetch(provider, cnpj).outcome == ERROR
    registries.fail(provider, RATE_LIMIT, retry_after=42)
    answer = fetch(provider, cnpj)
    assert (answer.outcome, answer.http_status, answer.retry_after) == (RATE_LIMITED, 429, 42)


def test_timeouts_and_connection_errors_are_unavailable(registries, settings):
    registries.fail("minhareceita", TIMEOUT, hang=2)
    started = time.monotonic()
    answer = fetch("minhareceita", SERPRO_FILIAL)
    assert (answer.outcome, answer.http_status, answer.detail) == (UNAVAILABLE, None, "timeout")
    assert time.monotonic() - started < 1.5  # the read timeout (0.5 s), not the hang
    registries.stop()
    answer = fetch("cnpjws", DBONE)
    assert (answer.outcome, answer.http_status) == (UNAVAILABLE, None)


def test_retry_after_forms(registries):
    registries.fail("brasilapi", RATE_LIMIT, retry_after=120, retry_after_date=True)  # HTTP date
    assert 115 <= fetch("brasilapi", OKBR).retry_after <= 121
    registries.fail("cnpjws", RATE_LIMIT, retry_after=90, header=None)  # "Liberação ocorrerá em …" only
    assert 85 <= fetch("cnpjws", DBONE).retry_after <= 91
    registries.fail("brasilapi", RATE_LIMIT, retry_after=None)  # Vercel's text/plain 429, no header
    answer = fetch("brasilapi", OKBR)
    assert (answer.outcome, answer.retry_after) == (RATE_LIMITED, None)
    registries.fail("brasilapi", STATUS, status=504, headers={"Retry-After": "120"}, body={"message": "timeout"})
    answer = fetch("brasilapi", OKBR)
    assert (answer.outcome, answer.retry_after) == (UNAVAILABLE, 120)


# ---------------------------------------------------------------- lookup: fallback and final outcome


def test_invalid_cnpj_asks_nobody(registries):
    result = registry_lookup("12ABC34501DE34")
    assert (result.outcome, result.error, result.attempts) == (LOOKUP_INVALID, "checksum", ())
    assert registry_lookup("１１２２２３３３０００１８１").error == "format"
    assert sum(registries.counts().values()) == 0


def test_found_on_the_first_provider(registries):
    result = registry_lookup("05.525.406/0001-01")
    assert (result.outcome, result.provider, result.partial) == (LOOKUP_FOUND, "cnpjws", False)
    assert result.record["cnpj"] == DBONE
    assert registries.counts() == {"cnpjws": 1, "brasilapi": 0, "minhareceita": 0, "receitaws": 0}
    assert result.record["provenance"]["attempts"] == [a.as_dict() for a in result.attempts]
    attempt = result.attempts[0]
    assert (attempt.provider, attempt.outcome, attempt.http_status) == ("cnpjws", FOUND, 200)
    assert attempt.latency_ms >= 0
    assert json.loads(json.dumps(result.as_dict())) == result.as_dict()


def test_fallback_order_on_failures(registries):
    registries.fail("cnpjws", SERVER_ERROR)
    result = registry_lookup(OKBR)
    assert outcomes(result) == [("cnpjws", UNAVAILABLE), ("brasilapi", FOUND)]
    assert result.attempts[0].http_status == 500 and result.provider == "brasilapi"


def test_minhareceita_is_asked_when_brasilapi_itself_fails(registries):
    registries.fail("cnpjws", FAKE_NOT_FOUND)
    registries.fail("brasilapi", RATE_LIMIT, retry_after=None)  # Vercel firewall: text/plain 429
    result = registry_lookup(OKBR)
    assert outcomes(result) == [("cnpjws", NOT_FOUND), ("brasilapi", RATE_LIMITED), ("minhareceita", FOUND)]
    assert result.record["provenance"]["provider"] == "minhareceita"


def test_minhareceita_does_not_second_guess_brasilapi(registries):
    """BrasilAPI's 404 is minha-receita's: asking minha-receita again proves nothing."""
    registries.fail("cnpjws", SERVER_ERROR)
    result = registry_lookup(GLOBO)  # not in BrasilAPI's data; ReceitaWS has it
    assert outcomes(result) == [("cnpjws", UNAVAILABLE), ("brasilapi", NOT_FOUND), ("receitaws", FOUND)]
    assert registries.count("minhareceita") == 0
    assert result.partial is True  # ReceitaWS: partners without documents or dates


def test_not_found_needs_two_independent_sources(registries):
    result = registry_lookup(UNKNOWN)
    assert result.outcome == LOOKUP_NOT_FOUND
    assert outcomes(result) == [("cnpjws", NOT_FOUND), ("brasilapi", NOT_FOUND)]
    assert registries.count("receitaws") == 0  # confirmed: no need to spend ReceitaWS's quota


def test_brasilapi_and_minhareceita_count_as_one_source(registries):
    registries.fail("brasilapi", SERVER_ERROR)
    result = registry_lookup(UNKNOWN, providers=["brasilapi", "minhareceita"])
    assert outcomes(result) == [("brasilapi", UNAVAILABLE), ("minhareceita", NOT_FOUND)]
    assert result.outcome == LOOKUP_FAILED  # one source said not found: not confirmed
    registries.fail("brasilapi", FAKE_NOT_FOUND)
    result = registry_lookup(UNKNOWN, providers=["brasilapi", "minhareceita", "receitaws"])
    assert outcomes(result) == [("brasilapi", NOT_FOUND), ("receitaws", NOT_FOUND)]
    assert result.outcome == LOOKUP_NOT_FOUND


def test_a_single_not_found_with_others_failing_is_a_failure(registries):
    registries.fail("cnpjws", SERVER_ERROR)
    registries.fail("receitaws", STATUS, status=504, body={"message": "Timeout"})
    result = registry_lookup(UNKNOWN)
    assert outcomes(result) == [("cnpjws", UNAVAILABLE), ("brasilapi", NOT_FOUND), ("receitaws", UNAVAILABLE)]
    assert (result.outcome, result.record) == (LOOKUP_FAILED, None)


def test_unsupported_alphanumeric_falls_through(registries):
    """The fake's cnpj.ws refuses alphanumeric CNPJs (400), as its public API may."""
    result = registry_lookup(ALNUM)
    assert outcomes(result) == [("cnpjws", UNSUPPORTED), ("brasilapi", FOUND)]


def test_throttled_when_every_provider_is_rate_limited(registries):
    for provider in PROVIDERS:
        registries.fail(provider, RATE_LIMIT, retry_after=30 + PROVIDERS.index(provider))
    result = registry_lookup(DBONE)
    assert result.outcome == LOOKUP_THROTTLED
    assert result.retry_after == 30
    assert [a.outcome for a in result.attempts] == [RATE_LIMITED] * 4
    # Every worker now skips them all without a request, and says how long to wait.
    again = registry_lookup(DBONE)
    assert again.outcome == LOOKUP_THROTTLED and [a.outcome for a in again.attempts] == [THROTTLED] * 4
    assert 1 <= again.retry_after <= 30
    assert registries.counts() == dict.fromkeys(PROVIDERS, 1)


def test_throttled_counts_not_found_sources_as_decided(registries):
    registries.fail("cnpjws", RATE_LIMIT, retry_after=20)
    registries.fail("receitaws", RATE_LIMIT, retry_after=50)
    result = registry_lookup(UNKNOWN)  # BrasilAPI: not found; the others must be asked later
    assert outcomes(result) == [("cnpjws", RATE_LIMITED), ("brasilapi", NOT_FOUND), ("receitaws", RATE_LIMITED)]
    assert (result.outcome, result.retry_after) == (LOOKUP_THROTTLED, 20)


# ---------------------------------------------------------------- global rate limiter


def test_parse_limits():
    assert parse_limits("3/60") == [(3, 60.0)]
    assert parse_limits("1/1, 60/60") == [(1, 1.0), (60, 60.0)]
    assert parse_limits("") == []


def test_rate_limiter_is_exact_across_threads(registries, settings):
    settings.CHECKS_RATE_LIMITS = {**settings.CHECKS_RATE_LIMITS, "cnpjws": "3/60"}
    barrier = threading.Barrier(20)

    def take(_):
        barrier.wait()
        return rate_limit_acquire("cnpjws")

    with ThreadPoolExecutor(20) as pool:
        waits = list(pool.map(take, range(20)))
    assert waits.count(0.0) == 3
    assert all(0 < wait <= 60 for wait in waits if wait)


def test_concurrent_lookups_make_exactly_the_allowed_upstream_calls(registries, settings):
    """10 lookups at once with cnpj.ws at 3/min: exactly 3 reach cnpj.ws, the other 7 fall back."""
    settings.CHECKS_RATE_LIMITS = {**settings.CHECKS_RATE_LIMITS, "cnpjws": "3/60"}
    same_company = dict(load_json("minhareceita_brasilapi_19131243000197.json"), cnpj=DBONE,
                        razao_social="DBONE INDUSTRIA E COMERCIO DE BEBIDAS LTDA")
    registries.add("brasilapi", DBONE, same_company)
    barrier = threading.Barrier(10)

    def lookup(_):
        barrier.wait()
        return registry_lookup(DBONE)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lookup, range(10)))
    assert registries.count("cnpjws") == 3
    assert registries.count("brasilapi") == 7
    assert all(result.outcome == LOOKUP_FOUND for result in results)
    assert sorted(result.provider for result in results) == ["brasilapi"] * 7 + ["cnpjws"] * 3
    skipped = [result.attempts[0] for result in results if result.provider == "brasilapi"]
    assert all(a.outcome == THROTTLED and 1 <= a.retry_after <= 60 for a in skipped)


def test_rate_limit_window_slides(registries, settings):
    settings.CHECKS_RATE_LIMITS = {**settings.CHECKS_RATE_LIMITS, "minhareceita": "2/1"}
    assert [rate_limit_acquire("minhareceita") for _ in range(2)] == [0.0, 0.0]
    wait = rate_limit_acquire("minhareceita")
    assert 0 < wait <= 1
    time.sleep(wait + 0.05)
    assert rate_limit_acquire("minhareceita") == 0.0


def test_rate_limit_with_several_windows(registries, settings):
    settings.CHECKS_RATE_LIMITS = {**settings.CHECKS_RATE_LIMITS, "brasilapi": "1/1,2/60"}
    assert rate_limit_acquire("brasilapi") == 0.0
    assert 0 < rate_limit_acquire("brasilapi") <= 1  # the per-second window is full
    time.sleep(1.05)
    assert rate_limit_acquire("brasilapi") == 0.0
    time.sleep(1.05)
    assert 55 < rate_limit_acquire("brasilapi") <= 60  # now the per-minute one is


# ---------------------------------------------------------------- 429 cooldown


def test_429_cooldown_is_honoured_by_every_later_lookup(registries):
    registries.fail("cnpjws", RATE_LIMIT, retry_after=30)
    first = registry_lookup(OKBR)
    assert outcomes(first)[:2] == [("cnpjws", RATE_LIMITED), ("brasilapi", FOUND)]
    assert first.attempts[0].retry_after == 30
    assert 28 < cooldown_remaining("cnpjws") <= 30
    second = registry_lookup(DBONE)
    assert second.attempts[0].provider == "cnpjws" and second.attempts[0].outcome == THROTTLED
    assert 1 <= second.attempts[0].retry_after <= 30
    assert registries.count("cnpjws") == 1  # skipped without a request


def test_429_cooldown_from_cnpjws_body_date(registries):
    registries.fail("cnpjws", RATE_LIMIT, retry_after=90, header=None)
    registry_lookup(OKBR)
    assert 85 < cooldown_remaining("cnpjws") <= 91


def test_429_without_retry_after_uses_the_default(registries, settings):
    settings.CHECKS_COOLDOWN_DEFAULT = 45
    registries.fail("cnpjws", FAKE_NOT_FOUND)
    registries.fail("brasilapi", RATE_LIMIT, retry_after=None)
    result = registry_lookup(OKBR)
    assert result.attempts[1].retry_after == 45
    assert 43 < cooldown_remaining("brasilapi") <= 45


def test_cooldown_is_never_shortened_and_expires(registries):
    cooldown_set("receitaws", 100)
    cooldown_set("receitaws", 10)
    assert cooldown_remaining("receitaws") > 90
    registries.fail("cnpjws", RATE_LIMIT, retry_after=1)
    registry_lookup(DBONE)
    assert registry_lookup(DBONE).attempts[0].outcome == THROTTLED
    time.sleep(1.1)
    assert registry_lookup(DBONE).provider == "cnpjws"
    assert registries.count("cnpjws") == 2


# ---------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_repeated_failures_and_half_opens(registries, settings):
    settings.CHECKS_BREAKER_FAILURES = 2
    settings.CHECKS_BREAKER_COOLDOWN = 1
    breaker = CircuitBreaker("cnpjws")
    registries.fail("cnpjws", SERVER_ERROR, times=2)
    registry_lookup(OKBR)
    assert breaker.state() == "closed"
    registry_lookup(OKBR)
    assert breaker.state() == "open"
    skipped = registry_lookup(OKBR)
    assert skipped.attempts[0].outcome == CIRCUIT_OPEN and skipped.attempts[0].retry_after == 1
    assert registries.count("cnpjws") == 2
    time.sleep(1.1)
    assert breaker.state() == "half_open"
    # One probe for everyone: a second caller keeps skipping while the first one's request runs.
    probe = breaker.allow()
    assert probe.allowed and probe.probing
    assert not breaker.allow().allowed
    breaker.release_probe()
    result = registry_lookup(DBONE)  # the probe succeeds: closed again
    assert (result.provider, result.attempts[0].outcome) == ("cnpjws", FOUND)
    assert breaker.state() == "closed"


def test_a_failed_probe_reopens_the_breaker(registries, settings):
    settings.CHECKS_BREAKER_FAILURES = 1
    settings.CHECKS_BREAKER_COOLDOWN = 1
    breaker = CircuitBreaker("brasilapi")
    registries.fail("brasilapi", SERVER_ERROR, times=2)
    registry_lookup(OKBR, providers=["brasilapi"])
    assert breaker.state() == "open"
    time.sleep(1.1)
    result = registry_lookup(OKBR, providers=["brasilapi"])  # the probe fails
    assert outcomes(result) == [("brasilapi", UNAVAILABLE)]
    assert breaker.state() == "open"
    assert registry_lookup(OKBR, providers=["brasilapi"]).attempts[0].outcome == CIRCUIT_OPEN
    assert registries.count("brasilapi") == 2


def test_a_5xx_with_retry_after_opens_the_breaker_at_once(registries):
    registries.fail("brasilapi", STATUS, status=504, headers={"Retry-After": "120"}, body={"message": "timeout"})
    registry_lookup(OKBR, providers=["brasilapi"])
    breaker = CircuitBreaker("brasilapi")
    assert breaker.state() == "open"
    assert 118 < redis_client().pttl(breaker.open_key) / 1000 <= 120


def test_not_found_and_429_do_not_trip_the_breaker(registries, settings):
    settings.CHECKS_BREAKER_FAILURES = 1
    registry_lookup(UNKNOWN)
    registries.fail("cnpjws", RATE_LIMIT, retry_after=5)
    registry_lookup(DBONE)
    assert CircuitBreaker("cnpjws").state() == "closed"
    assert CircuitBreaker("brasilapi").state() == "closed"


def test_all_breakers_open_is_a_failure_with_a_retry_hint(registries, settings):
    settings.CHECKS_BREAKER_FAILURES = 1
    for provider in PROVIDERS:
        registries.fail(provider, SERVER_ERROR)
    assert registry_lookup(DBONE).outcome == LOOKUP_FAILED
    result = registry_lookup(DBONE)
    assert [a.outcome for a in result.attempts] == [CIRCUIT_OPEN] * 4
    assert result.outcome == LOOKUP_FAILED and 1 <= result.retry_after <= 120


# ---------------------------------------------------------------- logs


def test_logs_carry_the_cnpj_and_outcome_never_the_payload(registries, caplog):
    caplog.set_level(logging.DEBUG)
    registry_lookup(DBONE)
    registry_lookup(MEI)
    registries.fail("cnpjws", SERVER_ERROR)
    registry_lookup(GLOBO)  # BrasilAPI 404, then ReceitaWS
    registries.fail("cnpjws", STATUS, status=200, body={"razao_social": "SEGREDO LTDA", "estabelecimento": "quebrado"})
    registry_lookup(OKBR)
    assert f"cnpj={DBONE}" in caplog.text and "outcome=found" in caplog.text
    for secret in ("WILLIAM MIRANDA BARCELLOS", "***101637**", "SANTA FE", "VILA PALESTINA", "32861717",
                   "DBONE INDUSTRIA", "MARIA FICTICIA", "12345678909", "maria.ficticia@gmail.com",
                   "DAS ACACIAS FICTICIAS", "PAULO DAUDT MARINHO", "LOPES QUINTAS", "HAYDEE SVAB", "SEGREDO",
                   "Lopes Quintas", "GLOBO COMUNICACAO"):
        assert secret not in caplog.text, secret
