"""Bulk checks: the CSV parser's edge cases, a batch end to end against the fake registries (eager
tasks), its progress and ETA, the results CSV, the quota and credits, and the pages' access rules."""

from __future__ import annotations

import codecs
import csv
import io
import random
import re
import warnings
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import AsyncClient
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from checks import bulk
from checks import cnpj as cnpj_id
from checks.bulk import (
    MAX_ROWS,
    BulkRefused,
    batch_create,
    batch_progress,
    batch_results_csv,
    batch_start,
    csv_parse,
    rate_limits_throughput,
)
from checks.cache import cached_lookup
from checks.models import Batch, Check, Target

FOUND = "19131243000197"  # BrasilAPI / minha-receita sample company
CACHED = "27865757000102"  # cnpj.ws sample company, looked up before the batch
ABSENT = "11222333000181"  # valid, in no registry

db = pytest.mark.django_db


def parse(text: str | bytes, encoding: str = "utf-8"):
    return csv_parse(io.BytesIO(text if isinstance(text, bytes) else text.encode(encoding)))


def upload(content: str | bytes, name: str = "list.csv") -> SimpleUploadedFile:
    data = content.encode("utf-8") if isinstance(content, str) else content
    return SimpleUploadedFile(name, data, content_type="text/csv")


def cnpjs(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        found[cnpj_id.generate(rng=rng)] = None
    return list(found)


# The parser


def test_utf8_bom_header_label_and_tags():
    parsed = parse(codecs.BOM_UTF8 + "CNPJ,Label,Tags\r\n19.131.243/0001-97,Ação Ltda,\"b, a\"\r\n".encode())
    assert (parsed.encoding, parsed.delimiter, parsed.header, parsed.rows) == ("utf-8", ",", True, 1)
    [entry] = parsed.entries
    assert (entry.cnpj, entry.label, entry.tags, entry.line) == (FOUND, "Ação Ltda", ["a", "b"], 2)


def test_semicolon_delimiter_latin1_and_a_cnpj_column_that_is_not_first():
    text = "Rótulo;Empresa CNPJ;Etiquetas\nAção;19.131.243/0001-97;x|y\nPão;11222333000181;\n"
    parsed = parse(text, "latin-1")
    assert parsed.delimiter == ";" and parsed.header and parsed.encoding in ("cp1252", "latin-1")
    assert [(e.cnpj, e.label, e.tags) for e in parsed.entries] == [(FOUND, "Ação", ["x", "y"]), (ABSENT, "Pão", [])]


def test_bytes_only_latin1_can_decode_fall_back_to_latin1():
    parsed = parse(b"cnpj;label\n19131243000197;caf\xe9 \x81\n")
    assert parsed.encoding == "latin-1" and parsed.entries[0].label == "café \x81"


def test_tab_delimiter():
    parsed = parse("cnpj\tnome\n19131243000197\tAcme, Ltda; filial\n")
    assert parsed.delimiter == "\t" and parsed.entries[0].label == "Acme, Ltda; filial"


def test_no_header_masked_and_unmasked_with_blank_lines_and_exact_line_numbers():
    text = "19.131.243/0001-97\n\n   \n11222333000181\r\n 27.865.757/0001-02 \n19.131.243/0001-98\n"
    parsed = parse(text)
    assert not parsed.header and parsed.rows == 4
    assert [(e.cnpj, e.line) for e in parsed.entries] == [(FOUND, 1), (ABSENT, 4), (CACHED, 5)]
    assert parsed.invalid == [{"line": 6, "value": "19.131.243/0001-98", "code": "checksum",
                               "reason": str(cnpj_id.MESSAGES[cnpj_id.CNPJError.CHECKSUM])}]


def test_without_a_header_only_the_first_column_is_read():
    parsed = parse("19131243000197,Acme\n")
    assert not parsed.header and parsed.entries[0].label == ""


def test_a_header_whose_first_cell_is_a_word_is_detected_even_without_a_cnpj_column():
    parsed = parse("documento,empresa\n19131243000197,Acme\n")
    assert parsed.header and [e.line for e in parsed.entries] == [2]


def test_duplicates_are_merged_counted_and_keep_the_first_label():
    alnum = "12ABC34501DE35"
    text = ("cnpj,label,tags\n19.131.243/0001-97,First,t1\n19131243000197,Second,t2\n"
            "12.abc.345/01de-35,Alpha,\n 19131243000197 ,Third,\n12ABC34501DE35,,\n")
    parsed = parse(text)
    assert parsed.rows == 5 and parsed.duplicates == 3
    assert [(e.cnpj, e.label, e.tags, e.line) for e in parsed.entries] == [
        (FOUND, "First", ["t1"], 2), (alnum, "Alpha", [], 4)]


def test_invalid_rows_carry_their_line_value_code_and_reason():
    long_value = "9" * 60
    text = ('cnpj,label\n19.131.243/0001-98,typo\n1913124300019,short\n12.ABC.345/01DE-3X,letters\n'
            ',no cnpj\n"19131243000197","multi\nline label"\n１９１３１２４３０００１９７,fullwidth\n'
            f"{long_value},long\n19131243000197,dup\n")
    parsed = parse(text)
    assert [(row["line"], row["code"]) for row in parsed.invalid] == [
        (2, "checksum"), (3, "length"), (4, "format"), (5, "empty"), (8, "format"), (9, "length")]
    assert parsed.invalid[0]["value"] == "19.131.243/0001-98" and parsed.invalid[3]["value"] == ""
    assert len(parsed.invalid[5]["value"]) == 40 and parsed.invalid[5]["value"].endswith("…")
    assert all(row["reason"] for row in parsed.invalid)
    assert parsed.entries[0].label == "multi\nline label" and parsed.entries[0].line == 6
    assert (parsed.rows, parsed.duplicates) == (8, 1)


def test_ten_thousand_rows_are_accepted_and_one_more_refuses_the_whole_file():
    rows = cnpjs(MAX_ROWS)
    parsed = parse("cnpj\n" + "\n".join(rows) + "\n")
    assert parsed.rows == MAX_ROWS and len(parsed.entries) == MAX_ROWS and parsed.entries[-1].line == MAX_ROWS + 1
    with pytest.raises(BulkRefused) as refused:
        parse("cnpj\n" + "\n".join(rows) + "\n" + FOUND + "\n")
    assert refused.value.code == "too_many_rows" and "10,000" in refused.value.message


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
    b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00",  # an XLSX
    b"\x01\x02\x03\x04\x05\x06\x07\x08" * 20,
])
def test_a_file_that_is_not_text_is_refused(data):
    with pytest.raises(BulkRefused) as refused:
        parse(data)
    assert refused.value.code == "not_text" and "CSV" in refused.value.message


def test_utf16_with_a_bom_is_read():
    parsed = parse(("cnpj\n" + FOUND + "\n").encode("utf-16"))
    assert parsed.encoding == "utf-16" and parsed.cnpjs == [FOUND]


def test_a_file_too_large_or_without_rows_is_refused():
    with pytest.raises(BulkRefused) as refused:
        parse(b"19131243000197\n" * (5 * 1024 * 1024 // 15 + 1))
    assert refused.value.code == "too_large"
    for empty in (b"", b"cnpj,label\n\n\n", codecs.BOM_UTF8):
        with pytest.raises(BulkRefused) as refused:
            parse(empty)
        assert refused.value.code == "empty"


def test_the_rate_limit_throughput_sums_each_providers_tightest_window():
    assert rate_limits_throughput({"cnpjws": "3/60", "receitaws": "3/60", "brasilapi": "1/1",
                                   "minhareceita": "1/1,60/60"}) == pytest.approx(2.1)
    assert rate_limits_throughput({"cnpjws": "2/1,30/60", "receitaws": "0/60", "brasilapi": "6/60",
                                   "minhareceita": "1/10"}) == pytest.approx(0.5 + 0 + 0.1 + 0.1)
    assert rate_limits_throughput({"cnpjws": "3/60", "receitaws": "3/60", "brasilapi": "1/1"}) == pytest.approx(
        3.1)  # minha-receita without a limit counts as 2/s


# Batches end to end






def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


MIXED = (
    "CNPJ;Label;Tags\n"                    # 1
    "19.131.243/0001-97;Found Co;b,a\n"    # 2 found (BrasilAPI)
    "27865757000102;=HYPERLINK(1);\n"      # 3 cached before the batch
    "11.222.333/0001-81;Absent;\n"         # 4 not found
    "19131243000197;Again;\n"              # 5 duplicate of line 2
    "19.131.243/0001-98;Typo;\n"           # 6 invalid: checksum
    "\n"                                   # 7 blank
    ";No CNPJ;\n"                          # 8 invalid: empty
)


def read_csv(lines) -> list[dict]:
    text = "".join(lines)
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text[1:])))


@db
def test_a_batch_runs_to_done_and_its_results_csv_has_every_cnpj_and_invalid_row(
        registries, funded, tenant_world, django_capture_on_commit_callbacks):
    org_a, _ = funded
    assert cached_lookup(CACHED).result.outcome == "found"  # another organization asked earlier
    user = tenant_world["a"]["member"]
    with schema_context(org_a.schema_name):
        with django_capture_on_commit_callbacks(execute=True):  # the batch task, then the checks, run eagerly
            batch = batch_create(organization=org_a, uploaded_file=upload(MIXED), user=user)
        batch.refresh_from_db()
        assert (batch.filename, batch.rows, batch.duplicates, batch.total) == ("list.csv", 6, 1, 3)
        assert [(row["line"], row["code"]) for row in batch.invalid_rows] == [(6, "checksum"), (8, "empty")]
        assert Target.objects.get(cnpj=FOUND).label == "Found Co" and Target.objects.get(cnpj=FOUND).tags == ["a", "b"]
        checks = Check.objects.filter(batch=batch)
        assert checks.count() == 3 and set(checks.values_list("source", flat=True)) == {"bulk"}
        assert checks.get(target__cnpj=CACHED).cache_hit
        progress = batch_progress(batch)
        assert (progress.found, progress.not_found, progress.failed, progress.cached) == (2, 1, 0, 1)
        assert progress.percent == 100 and progress.finished and progress.eta_seconds is None
        batch.refresh_from_db()
        assert batch.status == Batch.Status.DONE and batch.finished_at is not None
        rows = read_csv(batch_results_csv(batch))
    assert balance(org_a) == Decimal("500") - 5 - 5 - 1  # two lookups, one cached answer
    assert [(r["CNPJ"], r["Status"]) for r in rows[:3]] == [
        ("19.131.243/0001-97", "Found"), ("27.865.757/0001-02", "Found"), ("11.222.333/0001-81", "Not found")]
    found = rows[0]
    assert found["Label"] == "Found Co" and found["Company name"] and found["Risk level"]
    assert found["Registration status"] and found["Provider"] and found["Checked at"]
    with schema_context(org_a.schema_name):
        found_target = Target.objects.get(cnpj=FOUND).pk
    assert found["Report"] == f"/o/{org_a.slug}/checks/targets/{found_target}/"
    assert rows[1]["Label"] == "'=HYPERLINK(1)"  # never a formula in a spreadsheet
    assert rows[2]["Report"] == "" and rows[2]["Company name"] == ""
    assert [(r["Line"], r["Value"], r["Status"]) for r in rows[3:]] == [
        ("6", "19.131.243/0001-98", "Invalid"), ("8", "", "Invalid")]
    assert rows[3]["Reason"] == str(cnpj_id.MESSAGES[cnpj_id.CNPJError.CHECKSUM]) and rows[4]["Reason"]
    assert len(rows) == 5  # the duplicate is merged, the blank line skipped


@db
def test_when_credits_run_out_the_batch_stops_and_says_why(registries, funded, tenant_world,
                                                           django_capture_on_commit_callbacks):
    org_a, _ = funded
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=Decimal("7"))  # one 5-credit lookup
    with schema_context(org_a.schema_name):
        with django_capture_on_commit_callbacks(execute=True):
            batch = batch_create(organization=org_a, uploaded_file=upload(f"{FOUND}\n{ABSENT}\n{CACHED}\n"),
                                 user=tenant_world["a"]["member"])
        progress = batch_progress(batch)
        batch.refresh_from_db()
        assert batch.total == 1 and "Not enough credits" in batch.error
        assert (progress.found, progress.not_requested, progress.finished, progress.percent) == (1, 2, True, 100)
        assert batch.status == Batch.Status.DONE
        rows = read_csv(batch_results_csv(batch))
    assert [(r["CNPJ"], r["Status"]) for r in rows] == [
        ("19.131.243/0001-97", "Found"), ("11.222.333/0001-81", "Not checked"), ("27.865.757/0001-02", "Not checked")]
    assert "Not enough credits" in rows[1]["Reason"]


@db
def test_the_monthly_quota_is_checked_up_front_for_the_whole_batch(funded, tenant_world):
    org_a, _ = funded
    Plan.objects.filter(code="starter").update(checks_per_month=2)
    with schema_context(org_a.schema_name):
        with pytest.raises(BulkRefused) as refused:
            batch_create(organization=org_a, uploaded_file=upload(f"{FOUND}\n{ABSENT}\n{CACHED}\n"), user=None)
        assert not Batch.objects.exists() and not Target.objects.exists()
    assert refused.value.code == "quota_exceeded" and "2 checks a month" in refused.value.message


@db
def test_eta_before_any_check_finished_comes_from_the_rate_limits(funded, settings):
    # 3/60 on cnpj.ws and ReceitaWS, 1/1 on BrasilAPI and minha-receita: 0.05 + 0.05 + 1 + 1 = 2.1 lookups/s,
    # so 42 CNPJs take 42 / 2.1 = 20 seconds.
    settings.CHECKS_RATE_LIMITS = {"cnpjws": "3/60", "receitaws": "3/60", "brasilapi": "1/1", "minhareceita": "1/1"}
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        batch = batch_create(organization=org_a, uploaded_file=upload("\n".join(cnpjs(42))), user=None)  # not run
        progress = batch_progress(batch)
    assert (progress.total, progress.queued, progress.done, progress.percent) == (42, 42, 0, 0)
    assert (progress.eta_seconds, progress.eta_source, progress.eta_minutes) == (20, "limits", 1)
    assert not progress.finished and batch.status == Batch.Status.RUNNING


@db
def test_eta_after_enough_lookups_finished_comes_from_the_measured_rate(funded, settings):
    settings.CHECKS_RATE_LIMITS = {"cnpjws": "3/60", "receitaws": "3/60", "brasilapi": "1/1", "minhareceita": "1/1"}
    org_a, _ = funded
    now = timezone.now()
    with schema_context(org_a.schema_name):
        batch = Batch.objects.create(filename="x.csv", total=40, rows=40, created_at=now - timedelta(seconds=100))
        for index, cnpj in enumerate(cnpjs(40)):
            target = Target.objects.create(cnpj=cnpj)
            if index < 10:  # 10 lookups in the last 100 s: 0.1/s
                Check.objects.create(target=target, batch=batch, status=Check.Status.SUCCEEDED,
                                     finished_at=now - timedelta(seconds=index * 5))
            elif index < 12:  # cache hits are instant: not part of the pace
                Check.objects.create(target=target, batch=batch, status=Check.Status.SUCCEEDED, cache_hit=True,
                                     finished_at=now)
            else:
                Check.objects.create(target=target, batch=batch)
        progress = batch_progress(batch, now=now)
        assert (progress.done, progress.queued, progress.cached) == (12, 28, 2)
        assert (progress.eta_seconds, progress.eta_source, progress.eta_minutes) == (280, "measured", 5)  # 28 / 0.1
        lookups = Check.objects.filter(batch=batch, cache_hit=False, status=Check.Status.SUCCEEDED).order_by("pk")
        older = list(lookups.values_list("pk", flat=True))[4:]
        Check.objects.filter(pk__in=older).update(finished_at=now - timedelta(minutes=30))  # 4 recent: too few
        progress = batch_progress(batch, now=now)
    assert (progress.eta_seconds, progress.eta_source) == (14, "limits")  # ceil(28 / 2.1)


# Pages


def bulk_url(org, *parts) -> str:
    return "/".join([f"/o/{org.slug}/checks/bulk", *map(str, parts)]) + "/"


@db
def test_a_member_uploads_and_follows_the_batch_page(funded, client_for, settings):
    settings.CHECKS_RATE_LIMITS = {"cnpjws": "3/60", "receitaws": "3/60", "brasilapi": "1/1", "minhareceita": "1/1"}
    org_a, _ = funded
    client = client_for("a", "member")
    content = "cnpj,label\n" + "".join(f"{c},Co {i}\n" for i, c in enumerate(cnpjs(3))) + "".join(
        f"bad{i},x\n" for i in range(250))
    response = client.post(bulk_url(org_a), {"file": upload(content, "clients.csv")})
    assert response.status_code == 302
    batch_id = int(re.search(r"/bulk/(\d+)/$", response["Location"]).group(1))
    page = client.get(response["Location"])
    html = page.content.decode()
    assert page.status_code == 200 and "clients.csv" in html
    assert "3 distinct valid CNPJs" in html and "250 invalid rows" in html
    assert html.count("<code>bad") == 200 and "Showing the first 200 of 250 invalid rows" in html
    assert re.search(r'<td class="right">8</td><td><code>bad3</code>', html)  # the file's line 8
    assert "<progress" in html and 'hx-trigger="every 1s"' in html and "Less than a minute left" in html
    fragment = client.get(bulk_url(org_a, batch_id, "progress")).content.decode()
    assert 'hx-trigger="every 1s"' in fragment and "0 of 3 checked (0%)" in fragment
    with schema_context(org_a.schema_name):
        for target in Target.objects.all():
            Check.objects.create(target=target, batch_id=batch_id, status=Check.Status.NOT_FOUND,
                                 finished_at=timezone.now())
    fragment = client.get(bulk_url(org_a, batch_id, "progress")).content.decode()
    assert "hx-trigger" not in fragment and "3 of 3 checked (100%)" in fragment
    assert 'data-testid="batch-done"' in fragment
    listing = client.get(bulk_url(org_a)).content.decode()
    assert "clients.csv" in listing and 'data-testid="bulk-upload"' in listing
    download = client.get(f"/o/{org_a.slug}/checks/bulk/{batch_id}/results.csv")
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    assert "attachment" in download["Content-Disposition"]
    rows = read_csv(chunk.decode() for chunk in download.streaming_content)
    assert len(rows) == 3 + 250 and rows[3]["Line"] == "5" and rows[-1]["Line"] == "254"


@db
def test_a_refused_upload_shows_the_reason_next_to_the_field(funded, client_for):
    org_a, _ = funded
    Plan.objects.filter(code="starter").update(checks_per_month=1)
    response = client_for("a", "member").post(bulk_url(org_a), {"file": upload(f"{FOUND}\n{ABSENT}\n")})
    assert response.status_code == 400 and "1 checks a month" in response.content.decode()
    response = client_for("a", "member").post(bulk_url(org_a), {"file": upload(b"\x00\x01binary", "x.xlsx")})
    assert response.status_code == 400 and "This is not a CSV file" in response.content.decode()


@db
def test_a_viewer_sees_batches_but_cannot_upload(funded, client_for):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        Batch.objects.create(filename="theirs.csv", status=Batch.Status.DONE)
    client = client_for("a", "viewer")
    page = client.get(bulk_url(org_a)).content.decode()
    assert "theirs.csv" in page and 'data-testid="bulk-upload"' not in page and "bulk-viewer-note" in page
    assert client.post(bulk_url(org_a), {"file": upload(f"{FOUND}\n")}).status_code == 403
    with schema_context(org_a.schema_name):
        assert Batch.objects.count() == 1


@db
def test_another_organizations_member_gets_404_on_every_batch_url(funded, client_for):
    org_a, org_b = funded
    with schema_context(org_a.schema_name):
        batch = Batch.objects.create(filename="secret-a.csv", total=1, rows=1)
    paths = [bulk_url(org_a, batch.pk), bulk_url(org_a, batch.pk, "progress"),
             f"/o/{org_a.slug}/checks/bulk/{batch.pk}/results.csv", bulk_url(org_a)]
    outsider = client_for("b", "owner")
    for path in paths:
        response = outsider.get(path)
        assert response.status_code == 404 and b"secret-a" not in response.content, path
    # Their own organization's URLs with A's batch id: that schema has no such batch.
    for path in (bulk_url(org_b, batch.pk), bulk_url(org_b, batch.pk, "progress"),
                 f"/o/{org_b.slug}/checks/bulk/{batch.pk}/results.csv"):
        assert outsider.get(path).status_code == 404, path
    assert client_for("a", "viewer").get(bulk_url(org_a, batch.pk)).status_code == 200


@db
def test_the_batch_task_requests_in_chunks_and_never_twice(registries, funded, monkeypatch,
                                                           django_capture_on_commit_callbacks):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        batch = batch_create(organization=org_a, uploaded_file=upload(f"{FOUND}\n{ABSENT}\n{CACHED}\n"), user=None)
        assert batch_start(batch_id=batch.pk, limit=2) is True  # the task would queue itself again
        assert batch_start(batch_id=batch.pk, limit=2) is False
        assert batch_start(batch_id=batch.pk, limit=2) is False  # a redelivered task: nothing left
        assert sorted(Check.objects.filter(batch=batch).values_list("target__cnpj", flat=True)) == sorted(
            [FOUND, ABSENT, CACHED])

        monkeypatch.setattr(bulk, "START_CHUNK", 1)
        with django_capture_on_commit_callbacks(execute=True):  # three runs of the task, one check each
            other = batch_create(organization=org_a, uploaded_file=upload(f"{FOUND}\n{ABSENT}\n{CACHED}\n"),
                                 user=None)
        assert Check.objects.filter(batch=other).count() == 3 and batch_progress(other).finished


@db
def test_a_run_that_finds_another_at_work_on_the_batch_leaves(registries, funded):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        batch = batch_create(organization=org_a, uploaded_file=upload(f"{FOUND}\n"), user=None)
        params = connection.get_connection_params()
        with psycopg.connect(**params, autocommit=True) as other:  # another worker holds the batch
            key = f"checks.batch:{org_a.schema_name}:{batch.pk}"
            other.execute("SELECT pg_advisory_lock(hashtext(%s))", [key])
            assert batch_start(batch_id=batch.pk) is False
            assert not Check.objects.filter(batch=batch).exists()
            other.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])
        assert batch_start(batch_id=batch.pk) is False and Check.objects.filter(batch=batch).count() == 1


@db
def test_the_results_stream_under_asgi_too(funded, tenant_world):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        batch = Batch.objects.create(filename="a.csv", invalid_rows=[
            {"line": 2, "value": "x", "code": "length", "reason": "stored"}])
    client = AsyncClient()
    client.force_login(tenant_world["a"]["viewer"])

    async def download():
        response = await client.get(f"/o/{org_a.slug}/checks/bulk/{batch.pk}/results.csv")
        assert response.status_code == 200 and response.is_async  # chunks read off the loop, not buffered
        return b"".join([chunk async for chunk in response.streaming_content])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django warns when it must consume a synchronous iterator
        rows = read_csv([async_to_sync(download)().decode()])
    assert [(r["Line"], r["Status"], r["Reason"]) for r in rows] == [("2", "Invalid", "A CNPJ has 14 characters.")]


@db
def test_stopping_a_batch_cancels_its_queued_checks_and_releases_their_credits(registries, funded, tenant_world,
                                                                               client_for,
                                                                               django_capture_on_commit_callbacks):
    from .fake_registries import PROVIDERS, RATE_LIMIT

    org_a, _ = funded
    for provider in PROVIDERS:  # every registry rate-limited: the checks wait in the queue
        registries.fail(provider, RATE_LIMIT, retry_after=60)
    before = BillingAccount.objects.get(pk=org_a.pk).credits
    with schema_context(org_a.schema_name):
        with django_capture_on_commit_callbacks(execute=True):
            batch = batch_create(organization=org_a, uploaded_file=upload(f"{FOUND}\n{ABSENT}\n"),
                                 user=tenant_world["a"]["member"])
        assert Check.objects.filter(batch=batch, status=Check.Status.PENDING).count() == 2
    assert BillingAccount.objects.get(pk=org_a.pk).credits == before - 10  # two lookups held
    page = client_for("a", "member").get(bulk_url(org_a, batch.pk)).content.decode()
    assert 'data-testid="batch-cancel"' in page
    assert client_for("a", "viewer").post(bulk_url(org_a, batch.pk, "cancel")).status_code == 403
    response = client_for("a", "member").post(bulk_url(org_a, batch.pk, "cancel"))
    assert response.status_code == 302
    with schema_context(org_a.schema_name):
        batch.refresh_from_db()
        progress = batch_progress(batch)
        assert batch.status == Batch.Status.CANCELLED and batch.error
        assert set(Check.objects.filter(batch=batch).values_list("status", flat=True)) == {Check.Status.FAILED}
        assert progress.finished and progress.failed == 2
    assert BillingAccount.objects.get(pk=org_a.pk).credits == before  # every hold released
    assert client_for("b", "owner").post(bulk_url(org_a, batch.pk, "cancel")).status_code == 404
