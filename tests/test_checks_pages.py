"""The checks pages in process: add a CNPJ and read its report, live progress, history and diff, CSV and
print, alerts, settings, and who may see or do what. Registries are the local fakes (tests/fake_registries.py);
queued checks run eagerly, in the organization's schema, when the request's transaction would commit."""

from __future__ import annotations

import csv
import io
import random
import re
import uuid
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.ledger import credit_debit
from billing.models import BillingAccount, Plan
from checks import cnpj as cnpj_id
from checks.models import Alert, Check, ChecksSettings, Report, Target
from checks.services import check_request, check_run, report_write, target_add
from tenants.audit.models import AuditEvent

from .fake_registries import PROVIDERS, RATE_LIMIT, SERVER_ERROR, load_json

pytestmark = pytest.mark.django_db

FOUND = "19131243000197"  # BrasilAPI / minha-receita sample (cnpj.ws answers 404): OPEN KNOWLEDGE BRASIL
DBONE = "05525406000101"  # cnpj.ws sample with two partners
MEI = "99123456000106"  # cnpj.ws MEI sample: the owner's CPF inside the names
ABSENT = "11222333000181"  # valid, in no registry
HX = {"HTTP_HX_REQUEST": "true"}




def redis_forget(prefix: str) -> None:
    """Drop the shared cache, cooldowns and counters a test wrote under its own prefix."""
    from core.redis_clients import redis_client

    client = redis_client()
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)




@pytest.fixture
def queued(django_capture_on_commit_callbacks):
    """`with queued(org): client.post(...)`: what the request queued on commit runs afterwards, in org's schema.

    The tenant middleware resets the schema to public when the request ends, before a test transaction
    would commit; in production the callbacks run at the view's commit, inside the schema."""

    @contextmanager
    def run(org):
        with django_capture_on_commit_callbacks() as callbacks:
            yield callbacks
        with schema_context(org.schema_name):
            for callback in callbacks:
                callback()

    return run


def url(org, path: str = "") -> str:
    return f"/o/{org.slug}/checks/{path}"


def html(response) -> str:
    return response.content.decode()


def text_of(response) -> str:
    """The page's text, tags removed and whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html(response)).split())


def in_schema(org, fn):
    with schema_context(org.schema_name):
        return fn()


def add(client, org, queued, cnpj: str = FOUND, **fields):
    data = {"cnpj": cnpj, "label": "", "tags": "", "schedule": "none", **fields}
    with queued(org):
        response = client.post(url(org, "targets/new/"), data)
    return response


def checked_target(client, org, queued, cnpj: str = FOUND, **fields) -> Target:
    response = add(client, org, queued, cnpj, **fields)
    assert response.status_code == 302, html(response)
    return in_schema(org, lambda: Target.objects.get(cnpj=cnpj))


def csv_sections(response) -> list[list[list[str]]]:
    """A CSV split into its tables (separated by blank rows)."""
    sections, current = [], []
    for row in csv.reader(io.StringIO(response.content.decode())):
        if not row:
            sections.append(current)
            current = []
        else:
            current.append(row)
    sections.append(current)
    return sections


# ---------------------------------------------------------------- add, target page, report


def test_adding_a_cnpj_checks_it_and_the_target_page_shows_the_report(registries, funded, client_for, queued):
    org_a, _ = funded
    client = client_for("a", "member")
    response = add(client, org_a, queued, "19.131.243/0001-97", label="Main supplier", tags="south, supplier",
                   schedule="weekly")
    target = in_schema(org_a, lambda: Target.objects.get(cnpj=FOUND))
    assert response.status_code == 302 and response["Location"] == url(org_a, f"targets/{target.pk}/")
    assert (target.label, target.tags, target.schedule) == ("Main supplier", ["south", "supplier"], "weekly")

    page = client.get(response["Location"])
    body = text_of(page)
    assert page.status_code == 200
    assert "OPEN KNOWLEDGE BRASIL" in body and "19.131.243/0001-97" in body and "Main supplier" in body
    assert 'data-status="succeeded"' in html(page) and 'hx-trigger="every 1s"' not in html(page)  # final: no poll
    assert "Found by BrasilAPI." in body
    attempts = re.findall(r'data-provider="(\w+)" data-outcome="(\w+)"', html(page))
    assert attempts == [("cnpjws", "not_found"), ("brasilapi", "found")]
    report = in_schema(org_a, lambda: Report.objects.get(target=target))
    assert url(org_a, f"reports/{report.pk}/") in html(page)

    listing = client.get(url(org_a))
    row = re.search(rf'<tr data-testid="target-row" data-cnpj="{FOUND}">(.*?)</tr>', html(listing), re.S).group(1)
    assert "OPEN KNOWLEDGE BRASIL" in row and "Main supplier" in row and "supplier" in row
    assert 'data-status="succeeded"' in row and f'data-risk="{report.risk_level}"' in row and "Weekly" in row


def test_the_report_shows_company_data_masked_partners_signals_and_sources(registries, funded, client_for, queued):
    org_a, _ = funded
    client = client_for("a", "viewer")
    target = checked_target(client_for("a", "member"), org_a, queued, FOUND)
    report = in_schema(org_a, lambda: Report.objects.get(target=target))
    page = client.get(url(org_a, f"reports/{report.pk}/"))
    body = text_of(page)
    assert page.status_code == 200
    for expected in ("OPEN KNOWLEDGE BRASIL", "ATIVA", "3999 · Associação Privada", "DEMAIS", "9430-8/00",
                     "Atividades de associações de defesa de direitos sociais", "6204-0/00", "BELA VISTA",
                     "SAO PAULO/SP", "01311-902", "(11) 2385-1939", "Not declared"):
        assert expected in body, expected
    # The partner's document exactly as the registry published it (masked), never anything more.
    assert re.search(r'data-testid="partner-document">\*\*\*112108\*\*<', html(page))
    assert "HAYDEE SVAB" in body and "Presidente" in body and "41 a 50 anos" in body
    # Signals: title and explanation in the viewer's language, severity badge, evidence key and value.
    signal = re.search(r'<li class="signal severity-info" data-code="QSA_UNICO">(.*?)</li>', html(page), re.S).group(1)
    assert "Single partner" in signal and 'data-severity="INFO"' in signal
    assert "qsa[0].nome" in signal and "HAYDEE SVAB" in signal
    # Sources: the provider, the dates and every registry asked.
    sources = re.search(r'data-testid="sources">(.*?)</dl>', html(page), re.S).group(1)
    assert "BrasilAPI" in sources and report.data_date.strftime("%m/%d/%Y") in sources
    attempt = re.search(r'data-testid="report-attempts">.*?<tbody><tr>(.*?)</tr>', html(page), re.S).group(1)
    assert "publica.cnpj.ws" in attempt and "Not found" in attempt and ">404<" in attempt
    assert f'data-risk="{report.risk_level}"' in html(page)


def test_the_report_is_in_the_viewers_language(registries, funded, client_for, queued):
    org_a, _ = funded
    target = checked_target(client_for("a", "member"), org_a, queued, FOUND)
    report = in_schema(org_a, lambda: Report.objects.get(target=target))
    signals = [dict(s, texts={"en": {"title": "Single partner", "explanation": "One."},
                              "pt-br": {"title": "Sócio único", "explanation": "Um."}}) for s in report.signals]
    in_schema(org_a, lambda: Report.objects.filter(pk=report.pk).update(signals=signals))
    client = client_for("a", "viewer")
    client.post("/i18n/setlang/", {"language": "pt-br", "next": "/"})
    body = text_of(client.get(url(org_a, f"reports/{report.pk}/")))
    assert "Sócio único" in body and "Single partner" not in body


def test_a_sole_proprietors_cpf_stays_masked_on_every_page_and_export(registries, funded, client_for, queued):
    org_a, _ = funded
    raw = load_json("cnpjws_mei_99123456000106.json")
    cpf = re.search(r"\d{11}", raw["razao_social"]).group(0)
    client = client_for("a", "member")
    target = checked_target(client, org_a, queued, MEI)
    report = in_schema(org_a, lambda: Report.objects.get(target=target))
    pages = [client.get(url(org_a, path)) for path in (
        "", f"targets/{target.pk}/", f"reports/{report.pk}/", f"reports/{report.pk}/print/",
        f"reports/{report.pk}/csv/", "export.csv")]
    assert all(page.status_code == 200 for page in pages)
    assert report.data["razao_social"] in text_of(pages[2])  # the masked name, as stored
    for page in pages:
        assert cpf not in page.content.decode()


def test_a_cached_answer_is_final_at_once(registries, funded, client_for, queued):
    org_a, org_b = funded
    checked_target(client_for("a", "member"), org_a, queued, FOUND)
    asked = sum(registries.counts().values())
    client = client_for("b", "member")
    response = client.post(url(org_b, "targets/new/"), {"cnpj": FOUND, "schedule": "none"})  # nothing queued
    assert response.status_code == 302
    page = client.get(response["Location"])
    assert "answered at once from the shared cache" in text_of(page) and "OPEN KNOWLEDGE BRASIL" in text_of(page)
    assert 'hx-trigger="every 1s"' not in html(page)
    assert sum(registries.counts().values()) == asked


@pytest.mark.parametrize(("typed", "message"), [
    ("19.131.243/0001-98", "check digits are wrong"),
    ("1913124300019", "A CNPJ has 14 characters."),
    ("19.131.243/0001-9!", "digits and letters A–Z only"),
])
def test_an_invalid_cnpj_is_refused_with_its_reason_and_the_input_kept(funded, client_for, typed, message):
    org_a, _ = funded
    client = client_for("a", "member")
    response = client.post(url(org_a, "targets/new/"), {"cnpj": typed, "label": "Typo Ltd", "schedule": "none"})
    assert response.status_code == 400
    field = re.search(r'<div class="field has-error">(.*?)</div>', html(response), re.S).group(1)
    assert 'name="cnpj"' in field and message in field and 'role="alert"' in field
    assert 'value="Typo Ltd"' in html(response)
    assert in_schema(org_a, lambda: not Target.objects.exists())


def test_over_the_monthly_quota_the_form_explains_and_keeps_everything(registries, funded, client_for):
    org_a, _ = funded
    Plan.objects.filter(code="starter").update(checks_per_month=0)
    response = client_for("a", "member").post(url(org_a, "targets/new/"),
                                              {"cnpj": FOUND, "label": "Kept label", "schedule": "daily"})
    assert response.status_code == 402
    refusal = re.search(r'data-testid="refusal" data-code="quota_exceeded">(.*?)</div>', html(response), re.S)
    assert refusal and "0 checks a month" in refusal.group(1) and f"/o/{org_a.slug}/billing/" in refusal.group(1)
    assert 'value="Kept label"' in html(response) and 'value="daily" selected' in html(response)
    assert in_schema(org_a, lambda: not Target.objects.exists() and not Check.objects.exists())


def test_without_credits_the_form_links_to_billing_and_nothing_is_created(registries, funded, client_for):
    org_a, _ = funded
    account = BillingAccount.objects.get(pk=org_a.pk)
    credit_debit(organization=org_a, amount=account.credits - Decimal("2"), key=f"drain-{uuid.uuid4()}")
    response = client_for("a", "member").post(url(org_a, "targets/new/"), {"cnpj": FOUND, "schedule": "none"})
    assert response.status_code == 402
    refusal = re.search(r'data-code="insufficient_credits">(.*?)</div>', html(response), re.S).group(1)
    assert "Not enough credits" in refusal and f'href="/o/{org_a.slug}/billing/"' in refusal
    assert 'value="19131243000197"' in html(response)
    assert in_schema(org_a, lambda: not Target.objects.exists())


def test_the_add_form_shows_the_price(funded, client_for):
    org_a, _ = funded
    price = re.search(r'data-testid="price">(.*?)</span>', html(client_for("a", "member").get(url(org_a))), re.S)
    assert price and "5 credits a check, 1 when a recent answer is cached" in price.group(1)


def test_members_edit_a_target_and_check_or_refresh_it(registries, funded, client_for, queued):
    org_a, _ = funded
    client = client_for("a", "member")
    target = checked_target(client, org_a, queued, FOUND)
    response = client.post(url(org_a, f"targets/{target.pk}/edit/"),
                           {"label": "Renamed", "tags": "b, a", "schedule": "daily"})
    assert response.status_code == 302
    target = in_schema(org_a, lambda: Target.objects.get(pk=target.pk))
    assert (target.label, target.tags, target.schedule) == ("Renamed", ["a", "b"], "daily") and target.next_check_at

    asked = registries.count("brasilapi")
    response = client.post(url(org_a, f"targets/{target.pk}/check/"))  # the cache answers in the request
    assert response.status_code == 302 and registries.count("brasilapi") == asked
    with queued(org_a):
        client.post(url(org_a, f"targets/{target.pk}/check/"), {"refresh": "1"})
    assert registries.count("brasilapi") == asked + 1
    runs = in_schema(org_a, lambda: list(Check.objects.filter(target=target).order_by("id")
                                         .values_list("cache_hit", "refresh", "status")))
    assert runs == [(False, False, "succeeded"), (True, False, "succeeded"), (False, True, "succeeded")]
    page = client.get(url(org_a, f"targets/{target.pk}/"))
    assert len(re.findall(r'data-testid="history-row"', html(page))) == 3


# ---------------------------------------------------------------- live progress


def progress(client, org, check) -> str:
    response = client.get(url(org, f"runs/{check.pk}/progress/"), **HX)
    assert response.status_code == 200
    return html(response)


def test_progress_of_a_queued_then_throttled_then_finished_check(registries, funded, client_for, settings):
    org_a, _ = funded
    client = client_for("a", "viewer")
    check = in_schema(org_a, lambda: check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False))
    fragment = progress(client, org_a, check)
    assert 'hx-trigger="every 1s"' in fragment and 'data-status="pending"' in fragment and "Queued" in fragment
    assert 'data-testid="attempts"' not in fragment

    for provider in PROVIDERS:
        registries.fail(provider, RATE_LIMIT, retry_after=30)
    in_schema(org_a, lambda: check_run(check.pk))
    fragment = progress(client, org_a, check)
    assert 'hx-trigger="every 1s"' in fragment
    wait = re.search(r"Waiting for the registries' rate limit, next try in (\d+) s\.", fragment)
    assert wait and 25 <= int(wait.group(1)) <= 30
    assert re.findall(r'data-provider="(\w+)" data-outcome="(\w+)"', fragment) == [
        (provider, "rate_limited") for provider in PROVIDERS]
    assert "Rate-limited" in fragment

    in_schema(org_a, lambda: Check.objects.filter(pk=check.pk).update(status="running", run_after=None))
    assert "Asking the registries" in progress(client, org_a, check)

    redis_forget(settings.CHECKS_REDIS_PREFIX)  # the registries' cooldowns are over
    with schema_context(org_a.schema_name):
        Check.objects.filter(pk=check.pk).update(status="pending")
        check_run(check.pk)
    fragment = progress(client, org_a, check)
    assert 'hx-trigger' not in fragment.split(">", 1)[0] and 'data-status="succeeded"' in fragment
    report = in_schema(org_a, lambda: Report.objects.get(check_run=check))
    assert url(org_a, f"reports/{report.pk}/") in fragment
    # The final answer swaps the badges, the latest report and the history in, out of band.
    for element in ("target-badges", "latest-report", "report-history"):
        assert re.search(rf'id="{element}"[^>]*hx-swap-oob="true"', fragment), element
    assert "OPEN KNOWLEDGE BRASIL" in fragment


def test_progress_after_a_registry_error_shows_the_retry(registries, funded, client_for):
    org_a, _ = funded
    for provider in PROVIDERS:
        registries.fail(provider, SERVER_ERROR, times=None)
    with schema_context(org_a.schema_name):
        check = check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False)
        check_run(check.pk)
    fragment = progress(client_for("a", "viewer"), org_a, check)
    assert re.search(r"The registries did not answer; trying again in \d+ s\.", fragment)
    assert 'hx-trigger="every 1s"' in fragment and 'data-outcome="unavailable"' in fragment


def test_the_progress_url_without_htmx_goes_to_the_target_page(registries, funded, client_for):
    org_a, _ = funded
    check = in_schema(org_a, lambda: check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False))
    response = client_for("a", "viewer").get(url(org_a, f"runs/{check.pk}/progress/"))
    assert response.status_code == 302 and response["Location"] == url(org_a, f"targets/{check.target_id}/")


def test_the_target_page_polls_while_the_check_is_pending(registries, funded, client_for):
    org_a, _ = funded
    check = in_schema(org_a, lambda: check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False))
    page = client_for("a", "viewer").get(url(org_a, f"targets/{check.target_id}/"))
    assert f'hx-get="{url(org_a, f"runs/{check.pk}/progress/")}" hx-trigger="every 1s"' in html(page)
    assert "No report yet" in text_of(page)


# ---------------------------------------------------------------- history and diff


def closed_copy(data: dict) -> dict:
    partner = {**data["qsa"][0], "nome": "NOVA SOCIA", "documento_mascarado": "***999888**"}
    return {**data, "situacao": {"code": 8, "label": "BAIXADA", "since": "2026-10-01", "motivo": None},
            "qsa": [*data["qsa"], partner]}


def two_reports(client, org, queued) -> tuple[Target, Report, Report]:
    target = checked_target(client, org, queued, FOUND)
    with schema_context(org.schema_name):
        first = Report.objects.get(target=target)
        Report.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(days=7))
        second = report_write(target=target, check=None, record=closed_copy(first.data), provider="cnpjws")
    return target, first, second


def test_history_lists_reports_and_the_diff_shows_what_changed(registries, funded, client_for, queued):
    org_a, _ = funded
    target, first, second = two_reports(client_for("a", "member"), org_a, queued)
    client = client_for("a", "viewer")
    page = client.get(url(org_a, f"targets/{target.pk}/"))
    rows = re.findall(r'data-testid="history-row" data-report="(\d+)"', html(page))
    assert rows == [str(second.pk), str(first.pk)]
    assert re.search(rf'name="a" value="{first.pk}"[^>]*checked', html(page))
    assert re.search(rf'name="b" value="{second.pk}"[^>]*checked', html(page))

    response = client.get(url(org_a, f"targets/{target.pk}/diff/"), {"a": first.pk, "b": second.pk})
    assert response.status_code == 200
    changes = {path: (kind, row) for path, kind, row in re.findall(
        r'<tr class="change-\w+" data-path="([^"]+)" data-kind="(\w+)">(.*?)</tr>', html(response), re.S)}
    kind, row = changes["situacao.code"]
    assert kind == "changed" and "Registration status" in row and "ATIVA (2)" in row and "BAIXADA (8)" in row
    partner = next(row for path, (kind, row) in changes.items() if path.startswith("qsa[") and kind == "added")
    assert "NOVA SOCIA" in partner
    assert any(path.startswith("risk.signals[") for path in changes)  # signals that came or went
    risk = re.search(r'data-testid="risk-change">(.*?)</p>', html(response), re.S).group(1)
    assert f'data-risk="{first.risk_level}"' in risk and 'data-risk="BLOCKER"' in risk and "raised" in risk

    # The latest two by default, older first whatever the order asked.
    assert "BAIXADA (8)" in html(client.get(url(org_a, f"targets/{target.pk}/diff/")))
    swapped = client.get(url(org_a, f"targets/{target.pk}/diff/"), {"a": second.pk, "b": first.pk})
    assert re.search(r"<del>ATIVA \(2\)</del>.*?<ins>BAIXADA \(8\)</ins>", html(swapped), re.S)
    assert client.get(url(org_a, f"targets/{target.pk}/diff/"), {"a": first.pk, "b": first.pk}).status_code == 400
    report_page = client.get(url(org_a, f"reports/{second.pk}/"))
    assert f"diff/?a={first.pk}&amp;b={second.pk}" in html(report_page)


def test_the_diff_refuses_reports_of_another_target(registries, funded, client_for, queued):
    org_a, _ = funded
    member = client_for("a", "member")
    target, first, _second = two_reports(member, org_a, queued)
    other = checked_target(member, org_a, queued, DBONE)
    foreign = in_schema(org_a, lambda: Report.objects.get(target=other))
    response = client_for("a", "viewer").get(url(org_a, f"targets/{target.pk}/diff/"),
                                             {"a": first.pk, "b": foreign.pk})
    assert response.status_code == 404


# ---------------------------------------------------------------- exports and print


def test_report_csv_has_fields_partners_and_signals(registries, funded, client_for, queued):
    org_a, _ = funded
    client = client_for("a", "viewer")
    target = checked_target(client_for("a", "member"), org_a, queued, DBONE)
    report = in_schema(org_a, lambda: Report.objects.get(target=target))
    response = client.get(url(org_a, f"reports/{report.pk}/csv/"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    fields, partners, signals = csv_sections(response)
    assert fields[0] == ["field", "value"]
    values = dict(fields[1:])
    assert values["cnpj"] == "05.525.406/0001-01" and values["razao_social"].startswith("DBONE")
    assert values["situacao"] == "ATIVA" and values["capital_social"] == "400000.00"
    assert values["cnae_principal"].startswith("4639-7/01") and values["simples.optante"] == "true"
    assert values["risk_level"] == report.risk_level and values["provider"] == "cnpjws"
    assert partners[0][:3] == ["partner", "type", "document_masked"]
    assert {(row[0], row[2]) for row in partners[1:]} == {("WILLIAM MIRANDA BARCELLOS", "***101637**"),
                                                          ("CARLOS ALBERTO DE BONE", "***448267**")}
    assert signals[0] == ["signal", "severity", "title", "explanation", "evidence"]
    assert sorted(row[0] for row in signals[1:]) == sorted(s["code"] for s in report.signals)
    assert all(row[1] and row[2] and row[4] for row in signals[1:])  # severity, title, evidence


def test_targets_csv_export_follows_the_filters(registries, funded, client_for, queued):
    org_a, _ = funded
    member = client_for("a", "member")
    checked_target(member, org_a, queued, FOUND, label="=HYPERLINK(\"x\")", tags="alpha")
    checked_target(member, org_a, queued, ABSENT, tags="beta")
    response = client_for("a", "viewer").get(url(org_a, "export.csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    by_cnpj = {row["cnpj"]: row for row in rows}
    assert set(by_cnpj) == {"19.131.243/0001-97", "11.222.333/0001-81"}
    found = by_cnpj["19.131.243/0001-97"]
    assert (found["company_name"], found["status"], found["tags"]) == ("OPEN KNOWLEDGE BRASIL", "succeeded", "alpha")
    assert found["risk_level"] and found["last_checked_at"]
    assert found["label"].startswith("'=")  # a spreadsheet will not run it
    assert by_cnpj["11.222.333/0001-81"]["status"] == "not_found"
    filtered = client_for("a", "viewer").get(url(org_a, "export.csv"), {"tag": "beta"})
    assert [row["cnpj"] for row in csv.DictReader(io.StringIO(filtered.content.decode()))] == ["11.222.333/0001-81"]


def test_the_printable_report_has_no_navigation(registries, funded, client_for, queued):
    org_a, _ = funded
    target = checked_target(client_for("a", "member"), org_a, queued, DBONE)
    report = in_schema(org_a, lambda: Report.objects.get(target=target))
    page = client_for("a", "viewer").get(url(org_a, f"reports/{report.pk}/print/"))
    assert page.status_code == 200
    assert 'class="orgnav"' not in html(page) and 'class="topbar"' not in html(page)
    assert "checks-tabs" not in html(page) and "<script>" not in html(page)
    assert "css/checks.css" in html(page) and "data-print" in html(page)
    assert "DBONE INDUSTRIA" in text_of(page) and "***101637**" in html(page)


# ---------------------------------------------------------------- list: search, filters, pages, queries


def make_targets(count: int, **fields) -> list[Target]:
    rng = random.Random(count)
    now = timezone.now()
    levels = ["LOW", "MEDIUM", "HIGH", "BLOCKER"]
    return Target.objects.bulk_create([
        Target(cnpj=cnpj_id.generate(rng=rng), label=f"Supplier {n}", company_name=f"EMPRESA {n} LTDA",
               tags=["bulk", f"group{n % 3}"], status="succeeded", risk_level=levels[n % 4],
               last_checked_at=now, created_at=now - timedelta(minutes=n), **fields)
        for n in range(count)])


def test_search_filters_and_pages(funded, client_for):
    org_a, _ = funded
    targets = in_schema(org_a, lambda: make_targets(30))
    client = client_for("a", "viewer")

    def shown(**params) -> list[str]:
        return re.findall(r'data-testid="target-row" data-cnpj="(\w+)"', html(client.get(url(org_a), params)))

    assert len(shown()) == 25 and len(shown(page=2)) == 5
    sample = targets[7]
    assert shown(q=sample.cnpj_formatted) == [sample.cnpj]
    assert shown(q=sample.cnpj_formatted[:8]) and sample.cnpj in shown(q=sample.cnpj_formatted[:8])
    assert shown(q="supplier 7") == [sample.cnpj]
    assert shown(q="empresa 7 ltda") == [sample.cnpj]
    assert set(shown(risk="HIGH")) == {t.cnpj for t in targets if t.risk_level == "HIGH"}
    assert set(shown(tag="group1")) == {t.cnpj for t in targets if "group1" in t.tags}
    assert shown(status="failed") == []
    assert "No company matches" in text_of(client.get(url(org_a), {"status": "failed"}))
    assert shown(status="never") == []
    assert len(shown(risk="NOPE")) == 25  # an unknown filter value is ignored
    second_page = html(client.get(url(org_a), {"tag": "bulk", "page": 1}))
    assert "?tag=bulk&amp;page=2" in second_page


def test_the_list_runs_a_bounded_number_of_queries(funded, client_for, django_assert_max_num_queries):
    org_a, _ = funded
    client = client_for("a", "member")
    in_schema(org_a, lambda: make_targets(10))
    client.get(url(org_a))  # warm the session and caches
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        assert client.get(url(org_a)).status_code == 200
    in_schema(org_a, lambda: make_targets(50))
    with django_assert_max_num_queries(15):
        page = client.get(url(org_a))
    assert page.status_code == 200 and len(re.findall(r'data-testid="target-row"', html(page))) == 25
    with CaptureQueriesContext(connection) as many:
        client.get(url(org_a))
    assert len(many) == len(few)  # no query per row


# ---------------------------------------------------------------- alerts


def alert_for(client, org, queued) -> tuple[Target, Alert]:
    target = checked_target(client, org, queued, FOUND, schedule="daily")
    with schema_context(org.schema_name):
        first = Report.objects.get(target=target)
        report_write(target=target, check=None, record=closed_copy(first.data), provider="cnpjws")
        return target, Alert.objects.get(target=target)


def test_alerts_list_links_and_mark_as_read(registries, funded, client_for, queued):
    org_a, _ = funded
    member = client_for("a", "member")
    target, alert = alert_for(member, org_a, queued)
    home = html(member.get(url(org_a)))
    assert re.search(r'data-testid="unread-alerts"[^>]*>1<', home)

    page = member.get(url(org_a, "alerts/"))
    item = re.search(rf'<li class="card alert unread" data-testid="alert" data-alert="{alert.pk}" data-unread="1">'
                     r'(.*?)</div>\s*</li>', html(page), re.S)
    assert item, html(page)
    body = item.group(1)
    assert "Registration status changed" in body and "Partners changed" in body and "Risk level changed" in body
    assert url(org_a, f"targets/{target.pk}/") in body and url(org_a, f"reports/{alert.report_id}/") in body
    assert f"diff/?a={alert.previous_report_id}&amp;b={alert.report_id}" in body

    viewer = client_for("a", "viewer")
    assert viewer.post(url(org_a, f"alerts/{alert.pk}/read/")).status_code == 403
    assert 'data-testid="mark-read"' not in html(viewer.get(url(org_a, "alerts/")))
    response = member.post(url(org_a, f"alerts/{alert.pk}/read/"), {"next": url(org_a, "alerts/")})
    assert response.status_code == 302 and response["Location"] == url(org_a, "alerts/")
    assert in_schema(org_a, lambda: Alert.objects.get(pk=alert.pk).read_at is not None)
    page = html(member.get(url(org_a, "alerts/")))
    assert 'data-unread="0"' in page and 'data-testid="unread-alerts"' not in page
    assert member.post(url(org_a, "alerts/999999/read/")).status_code == 404
    assert member.post(url(org_a, "alerts/read/"), {"next": "https://evil.example/"})["Location"] == url(
        org_a, "alerts/")


# ---------------------------------------------------------------- settings


def test_settings_validate_each_threshold_and_save_for_owners(funded, client_for):
    org_a, _ = funded
    owner = client_for("a", "owner")
    page = owner.get(url(org_a, "settings/"))
    assert page.status_code == 200
    assert 'name="situacao_recente_days" value="90"' in html(page) and "Default: 90." in html(page)
    assert 'value="6491300, 6612603, 9200399"' in html(page)

    bad = {"retention_days": "30", "alert_emails": "on", "socio_faixa_jovem_max": "15",
           "capital_baixo_limit": "abc", "cnaes_sensiveis": "6491300, banana", "qsa_grande_limit": "5"}
    response = owner.post(url(org_a, "settings/"), bad)
    assert response.status_code == 400

    def error_of(name: str) -> str:
        field = re.search(rf'<div class="field has-error">\s*<label for="id_{name}">(.*?)</div>', html(response),
                          re.S)
        return field.group(1) if field else ""

    assert "must be at most 9" in error_of("socio_faixa_jovem_max")
    assert "expected a number" in error_of("capital_baixo_limit")
    assert "is not a CNAE code" in error_of("cnaes_sensiveis")
    assert error_of("qsa_grande_limit") == "" and 'value="15"' in html(response)  # what was typed stays
    assert in_schema(org_a, lambda: not ChecksSettings.objects.filter(retention_days=30).exists())

    crossed = owner.post(url(org_a, "settings/"), {"retention_days": "30", "empresa_recente_medium_days": "400"})
    assert "must not exceed" in html(crossed) and crossed.status_code == 400

    good = {"retention_days": "30", "socio_faixa_jovem_max": "3", "capital_baixo_limit": "5000.50",
            "cnaes_sensiveis": "6491300; 9200", "situacao_recente_days": "90"}
    response = owner.post(url(org_a, "settings/"), good)
    assert response.status_code == 302
    row = in_schema(org_a, lambda: ChecksSettings.objects.get())
    assert (row.retention_days, row.alert_emails) == (30, False)
    assert row.thresholds == {"socio_faixa_jovem_max": 3, "capital_baixo_limit": "5000.50",
                              "cnaes_sensiveis": ["6491300", "9200"]}  # only what differs from the defaults
    assert in_schema(org_a, lambda: AuditEvent.objects.filter(action="checks.settings_changed").exists())
    assert 'value="5000.50"' in html(owner.get(url(org_a, "settings/")))

    assert client_for("a", "admin").get(url(org_a, "settings/")).status_code == 200
    for role in ("member", "viewer"):
        client = client_for("a", role)
        assert client.get(url(org_a, "settings/")).status_code == 403
        assert client.post(url(org_a, "settings/"), good).status_code == 403
        assert url(org_a, "settings/") not in html(client.get(url(org_a)))


# ---------------------------------------------------------------- who sees and does what


def id_urls(org, ids: dict) -> list[tuple[str, str]]:
    """(method, url) of every checks page that takes an id."""
    return [
        ("get", url(org, f"targets/{ids['target']}/")),
        ("post", url(org, f"targets/{ids['target']}/edit/")),
        ("post", url(org, f"targets/{ids['target']}/check/")),
        ("get", url(org, f"targets/{ids['target']}/diff/?a={ids['first']}&b={ids['second']}")),
        ("get", url(org, f"runs/{ids['check']}/progress/")),
        ("get", url(org, f"reports/{ids['second']}/")),
        ("get", url(org, f"reports/{ids['second']}/csv/")),
        ("get", url(org, f"reports/{ids['second']}/print/")),
        ("post", url(org, f"alerts/{ids['alert']}/read/")),
    ]


def test_another_organizations_member_gets_404_on_every_id(registries, funded, client_for, queued):
    org_a, org_b = funded
    target, alert = alert_for(client_for("a", "member"), org_a, queued)
    with schema_context(org_a.schema_name):
        first, second = Report.objects.filter(target=target).order_by("created_at", "id")
        ids = {"target": target.pk, "first": first.pk, "second": second.pk, "alert": alert.pk,
               "check": Check.objects.get(target=target).pk}
    outsider = client_for("b", "owner")
    for method, path in id_urls(org_a, ids) + [("get", url(org_a)), ("get", url(org_a, "export.csv")),
                                                ("get", url(org_a, "alerts/")), ("get", url(org_a, "settings/"))]:
        response = getattr(outsider, method)(path, **HX)
        assert response.status_code == 404, (method, path, response.status_code)
        assert b"OPEN KNOWLEDGE" not in response.content
    # The same ids under org B's own address are not org B's: nothing there either.
    for method, path in id_urls(org_b, ids):
        response = getattr(outsider, method)(path, **HX)
        assert response.status_code == 404, (method, path, response.status_code)
    assert in_schema(org_a, lambda: Alert.objects.get(pk=alert.pk).read_at is None)


def test_viewers_read_but_cannot_add_check_or_edit(registries, funded, client_for, queued):
    org_a, _ = funded
    target = checked_target(client_for("a", "member"), org_a, queued, FOUND)
    viewer = client_for("a", "viewer")
    home = viewer.get(url(org_a))
    assert home.status_code == 200 and 'data-testid="add-form"' not in html(home)
    page = viewer.get(url(org_a, f"targets/{target.pk}/"))
    assert page.status_code == 200 and 'data-testid="check-now"' not in html(page)
    assert 'data-testid="edit-form"' not in html(page)
    assert viewer.post(url(org_a, "targets/new/"), {"cnpj": DBONE, "schedule": "none"}).status_code == 403
    assert viewer.post(url(org_a, f"targets/{target.pk}/check/")).status_code == 403
    assert viewer.post(url(org_a, f"targets/{target.pk}/edit/"), {"label": "x", "schedule": "none"}).status_code == 403
    assert viewer.post(url(org_a, "alerts/read/")).status_code == 403
    with schema_context(org_a.schema_name):
        assert not Target.objects.filter(cnpj=DBONE).exists() and Check.objects.count() == 1
        assert Target.objects.get(pk=target.pk).label == ""


def test_pages_answer_get_only_where_they_read(funded, client_for):
    org_a, _ = funded
    client = client_for("a", "member")
    assert client.get(url(org_a, "targets/new/")).status_code == 405
    assert client.post(url(org_a)).status_code == 405
    assert client.post(url(org_a, "export.csv")).status_code == 405
