"""Bulk checks: a CSV of up to 10,000 CNPJs becomes a batch of checks, with its progress and results.

    csv_parse(file)             the distinct valid CNPJs (duplicates merged) and the invalid rows, by line
    batch_create(...)           quota checked up front, targets created, `batch_start_task` queued
    batch_start(batch_id=...)   requests the batch's checks, a chunk at a time (the task; idempotent)
    batch_progress(batch)       counts, percent and an ETA; marks the batch done
    batch_results_csv(batch)    the results as CSV lines, read in chunks and streamed

A batch checks each distinct CNPJ once through `check_request(source=BULK, batch=batch)`: cache
hits finish at once, the others wait their turn. When the credits (or the quota) run out, the
batch stops requesting, says why in `Batch.error` and `Batch.total` becomes the number of checks
it did request.

Fair sharing: a batch never floods the `checks` queue. Its checks are requested (rows written,
credits held) but not queued; `checks.services.checks_feed` queues them in slices of the plan's
`concurrent_checks` (counting every background check of the organization queued or running)
and tops the slice up as each check finishes. Other organizations' checks, queued at once when
someone asks on a page or the API, so wait behind a handful of tasks, not behind the batch;
and the registries' windows go to them first (checks.registries.limits).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Func, IntegerField, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_tenants.utils import schema_context

from accounts.models import User
from core.csv_cells import csv_value
from core.events import event_emit
from tenants.models import Organization

from . import cnpj as cnpj_id
from .models import Batch, Check, RiskLevel, Target
from .registries import CLIENTS
from .registries.limits import parse_limits
from .services import (
    CheckRefused,
    check_cancel,
    check_request,
    checks_feed,
    current_organization,
    quota_check,
    tags_clean,
    target_add,
)

logger = logging.getLogger(__name__)

MAX_ROWS = 10_000
MAX_BYTES = 5 * 1024 * 1024  # 10,000 rows of ~500 bytes: far more than a CNPJ, a label and tags need
VALUE_MAX = 40  # characters of an invalid value kept for the report
START_CHUNK = 500  # checks requested per run of `batch_start_task`
INVALID_SHOWN = 200  # invalid rows listed on the batch page (the CSV has them all)
ETA_WINDOW = 300  # seconds of finished lookups the measured rate looks at
ETA_MIN_MEASURED = 5  # lookups finished in that window before the measured rate replaces the limits
UNLIMITED_PROVIDER_RATE = 2.0  # lookups/second assumed for a provider without a configured limit
DELIMITERS = ("\t", ";", ",")  # ties go to the first: a tab or ";" rarely appears inside a value
CNPJ_NAMES = ("cnpj",)  # contained: "CNPJ", "cnpj_empresa", "Empresa CNPJ"
LABEL_NAMES = ("label", "rotulo", "nome", "name", "apelido", "descricao", "description")
TAGS_NAMES = ("tags", "tag", "etiquetas", "marcadores")
INVALID_EMPTY = "empty"

INVALID_REASONS = {
    INVALID_EMPTY: gettext_lazy("This row has no CNPJ."),
    **{str(error): message for error, message in cnpj_id.MESSAGES.items()},
}


class BulkRefused(Exception):
    """A file (or a batch) that cannot be accepted; `code` says why, `message` tells the person."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class CsvEntry:
    cnpj: str  # canonical
    label: str
    tags: list[str]
    line: int  # the first line it appeared on


@dataclass(frozen=True)
class ParsedCsv:
    entries: list[CsvEntry]  # distinct valid CNPJs, in file order
    invalid: list[dict]  # {"line", "value", "code", "reason"}
    rows: int  # data rows read (blank lines and the header excluded)
    duplicates: int  # valid rows whose CNPJ an earlier row had
    delimiter: str
    encoding: str
    header: bool

    @property
    def cnpjs(self) -> list[str]:
        return [entry.cnpj for entry in self.entries]


def invalid_reason(row: dict) -> str:
    """The reason of an invalid row in the current language (the stored one was in the uploader's)."""
    reason = INVALID_REASONS.get(row.get("code", ""))
    return str(reason) if reason is not None else str(row.get("reason", ""))


# Parsing


def _not_text() -> BulkRefused:
    return BulkRefused("not_text", _(
        "This is not a CSV file. Save the spreadsheet as CSV (comma- or semicolon-separated) and upload that."))


def _read(file) -> bytes:
    size = getattr(file, "size", None)
    if size is not None and size > MAX_BYTES:
        raise _too_large()
    if hasattr(file, "seek"):
        file.seek(0)
    data = file.read(MAX_BYTES + 1)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_BYTES:
        raise _too_large()
    return data


def _too_large() -> BulkRefused:
    return BulkRefused("too_large", _("The file is larger than %(size)s MB: split it into smaller files.")
                       % {"size": MAX_BYTES // (1024 * 1024)})


def _decode(data: bytes) -> tuple[str, str]:
    """The text and its encoding: UTF-8 (BOM or not), UTF-16 with a BOM, else Windows-1252 / Latin-1."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise _not_text() from None
    if b"\x00" in data:
        raise _not_text()
    candidates = ("utf-8-sig", "cp1252", "latin-1") if data.startswith(codecs.BOM_UTF8) else (
        "utf-8", "cp1252", "latin-1")
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        sample = text[:8192]
        controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\r\n\f\v")
        if sample and controls > len(sample) // 100:
            raise _not_text()
        return text, "utf-8" if encoding == "utf-8-sig" else encoding
    raise _not_text()  # unreachable: Latin-1 decodes any byte


def _delimiter(text: str) -> str:
    """The delimiter that splits the most of the first lines into the same number (> 1) of fields."""
    sample = [line for line in text.splitlines()[:100] if line.strip()][:50]
    best, best_score = ",", 0
    for delimiter in DELIMITERS:
        widths = [len(row) for row in csv.reader(sample, delimiter=delimiter)]
        split = [width for width in widths if width > 1]
        if not split:
            continue
        usual = Counter(split).most_common(1)[0][0]
        score = sum(1 for width in widths if width == usual)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _name(cell: str) -> str:
    folded = unicodedata.normalize("NFKD", cell.strip().strip("\"'").lower())
    return "".join(c for c in folded if not unicodedata.combining(c)).strip()


@dataclass
class _Columns:
    cnpj: int = 0
    label: int | None = None
    tags: int | None = None


def _header(row: list[str]) -> _Columns | None:
    """The columns if `row` is a header: it names a cnpj/label/tags column, or its first cell is a word."""
    names = [_name(cell) for cell in row]

    def find(candidates) -> int | None:
        return next((i for i, name in enumerate(names) if name in candidates), None)

    cnpj_column = next((i for i, name in enumerate(names) if any(word in name for word in CNPJ_NAMES)), None)
    label_column, tags_column = find(LABEL_NAMES), find(TAGS_NAMES)
    first = row[0].strip() if row else ""
    is_word = bool(first) and not any(c.isdigit() for c in first)
    if cnpj_column is None and label_column is None and tags_column is None and not is_word:
        return None
    return _Columns(cnpj=cnpj_column if cnpj_column is not None else 0, label=label_column, tags=tags_column)


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def _truncate(value: str) -> str:
    return value if len(value) <= VALUE_MAX else value[:VALUE_MAX - 1] + "…"


def csv_parse(file) -> ParsedCsv:
    """Read an uploaded CSV of CNPJs (see the module docstring); raises BulkRefused for the whole file.

    Lines are the file's own, 1-based (the header is line 1 when there is one). Without a header
    only the first column is read; with one, the column named cnpj (else the first) and the
    optional label and tags columns (tags separated by `,`, `;` or `|`).
    """
    text, encoding = _decode(_read(file))
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns: _Columns | None = None
    header = False
    entries: list[CsvEntry] = []
    invalid: list[dict] = []
    seen: set[str] = set()
    rows = duplicates = 0
    previous_line = 0
    try:
        for row in reader:
            line, previous_line = previous_line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                columns = _header(row)
                if columns is not None:
                    header = True
                    continue
                columns = _Columns()
            rows += 1
            if rows > MAX_ROWS:
                raise BulkRefused("too_many_rows", _(
                    "The file has more than %(max)s rows: split it into files of up to %(max)s CNPJs.")
                    % {"max": f"{MAX_ROWS:,}"})
            raw = _cell(row, columns.cnpj)
            if not raw:
                invalid.append({"line": line, "value": "", "code": INVALID_EMPTY,
                                "reason": str(INVALID_REASONS[INVALID_EMPTY])})
                continue
            validation = cnpj_id.validate(raw)
            if not validation.is_valid:
                invalid.append({"line": line, "value": _truncate(raw), "code": str(validation.error),
                                "reason": str(validation.message)})
            elif validation.cnpj in seen:
                duplicates += 1
            else:
                seen.add(validation.cnpj)
                tags = tags_clean(re.split(r"[,;|]", _cell(row, columns.tags)))
                entries.append(CsvEntry(validation.cnpj, _cell(row, columns.label)[:200], tags, line))
    except csv.Error as error:
        raise BulkRefused("not_csv", _("Line %(line)s could not be read as CSV (%(error)s).")
                          % {"line": previous_line + 1, "error": error}) from None
    if rows == 0:
        raise BulkRefused("empty", _("The file has no rows with a CNPJ."))
    return ParsedCsv(entries=entries, invalid=invalid, rows=rows, duplicates=duplicates, delimiter=delimiter,
                     encoding=encoding, header=header)


# Batches


def batch_create(*, organization: Organization, uploaded_file, user: User | None) -> Batch:
    """A batch for the uploaded CSV, its missing targets created, its checks queued (`batch_start_task`).

    Refused (BulkRefused) when the file is, or when the month's quota cannot hold every distinct
    valid CNPJ. A file with only invalid rows makes a batch that is done at once (its report).
    """
    from .tasks import batch_start_task

    parsed = csv_parse(uploaded_file)
    count = len(parsed.entries)
    if count:
        try:
            quota_check(organization, count=count)
        except CheckRefused as refused:
            raise BulkRefused(refused.code, refused.message) from None
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            filename=os.path.basename(getattr(uploaded_file, "name", "") or "")[:255], rows=parsed.rows,
            duplicates=parsed.duplicates, invalid_rows=parsed.invalid, total=count, cnpjs=parsed.cnpjs,
            created_by=user, status=Batch.Status.RUNNING if count else Batch.Status.DONE,
            finished_at=None if count else now)
        # Existing targets keep their labels and tags; ignore_conflicts also covers a concurrent upload.
        Target.objects.bulk_create(
            [Target(cnpj=entry.cnpj, label=entry.label, tags=entry.tags, created_by=user, created_at=now)
             for entry in parsed.entries], ignore_conflicts=True, batch_size=1000)
        if count:
            transaction.on_commit(lambda: batch_start_task.delay(batch.pk))
        else:  # only invalid rows: done at once
            batch_event_emit(organization=organization, batch=batch, counts={}, invalid=len(parsed.invalid))
    logger.info("batch %s created: %s rows, %s CNPJs, %s duplicates, %s invalid", batch.pk, parsed.rows, count,
                parsed.duplicates, len(parsed.invalid))
    return batch


def batch_start(*, batch_id: int, limit: int | None = None) -> bool:
    """Request the next `limit` (START_CHUNK) checks of a running batch and feed the queue (`checks_feed`);
    True when more remain (run it again).

    Idempotent: CNPJs that already have a check in the batch are skipped, and a run that finds
    another one at work on the batch (a redelivered task) leaves. A refusal (credits, quota) stops
    the batch from requesting more: `error` says why, `total` counts what was requested.
    """
    with _batch_lock(batch_id) as locked:
        if not locked:
            return False
        batch = Batch.objects.filter(pk=batch_id, status=Batch.Status.RUNNING, error="").first()
        if batch is None:
            return False
        requested = set(Check.objects.filter(batch=batch).values_list("target__cnpj", flat=True))
        todo = [cnpj for cnpj in batch.cnpjs if cnpj not in requested]
        chunk = todo[:limit or START_CHUNK]
        targets = Target.objects.in_bulk(chunk, field_name="cnpj")
        user = User.objects.filter(pk=batch.created_by_id).first() if batch.created_by_id else None
        organization = current_organization()
        for cnpj in chunk:
            target = targets.get(cnpj) or target_add(cnpj=cnpj, user=user)  # deleted since the upload
            try:
                check_request(organization=organization, target=target, source=Check.Source.BULK, user=user,
                              batch=batch)
            except CheckRefused as refused:
                Batch.objects.filter(pk=batch.pk).update(
                    error=str(refused.message)[:255], total=Check.objects.filter(batch=batch).count())
                logger.info("batch %s stopped: %s", batch.pk, refused.code)
                checks_feed()
                batch_finish(batch_id=batch.pk)  # what it requested may all be answered (cache hits)
                return False
        checks_feed()
        more = len(todo) > len(chunk)
        if not more:
            batch_finish(batch_id=batch.pk)
        return more


@contextmanager
def _batch_lock(batch_id: int) -> Iterator[bool]:
    """A session advisory lock on the batch (released if the worker's connection dies): True if taken."""
    key = f"checks.batch:{connection.schema_name}:{batch_id}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key])
        locked = cursor.fetchone()[0]
    try:
        yield locked
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])


BATCH_COUNTS = {
    "created": Count("pk"),
    "open": Count("pk", filter=Q(status__in=[Check.Status.PENDING, Check.Status.RUNNING])),
    "found": Count("pk", filter=Q(status=Check.Status.SUCCEEDED)),
    "not_found": Count("pk", filter=Q(status=Check.Status.NOT_FOUND)),
    "failed": Count("pk", filter=Q(status=Check.Status.FAILED)),
    "cached": Count("pk", filter=Q(status__in=Check.FINAL, cache_hit=True)),
}


def batch_finish(*, batch_id: int, now: datetime | None = None) -> bool:
    """Mark a running batch done once every check it requested has an answer, and send `batch.completed` with it
    (in this transaction); whether it finished now. The batch's row is locked first, so of two checks finishing
    last at once, the second sees the first's answer: the batch finishes once, its event is sent once."""
    now = now or timezone.now()
    with transaction.atomic():
        batch = (Batch.objects.select_for_update().defer("cnpjs", "invalid_rows")
                 .annotate(invalid_count=_json_length("invalid_rows"))
                 .filter(pk=batch_id, status=Batch.Status.RUNNING).first())
        if batch is None:
            return False
        counts = Check.objects.filter(batch_id=batch_id).aggregate(**BATCH_COUNTS)
        if counts["open"] or counts["created"] < batch.total:
            return False
        batch.status, batch.finished_at = Batch.Status.DONE, now
        batch.save(update_fields=["status", "finished_at"])
        batch_event_emit(organization=current_organization(), batch=batch, counts=counts,
                         invalid=batch.invalid_count)
    return True


def batch_event_emit(*, organization: Organization, batch: Batch, counts: dict, invalid: int) -> None:
    event_emit(organization=organization, type="batch.completed", data={
        "batch_id": batch.pk, "filename": batch.filename, "status": batch.status, "rows": batch.rows,
        "checks": counts.get("created", 0), "found": counts.get("found", 0),
        "not_found": counts.get("not_found", 0), "failed": counts.get("failed", 0),
        "cached": counts.get("cached", 0), "invalid_rows": invalid, "duplicates": batch.duplicates,
        "stopped": batch.error,
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
    })


def _json_length(name: str) -> Func:
    return Func(F(name), function="jsonb_array_length", output_field=IntegerField())


def batch_list(*, limit: int = 50) -> QuerySet[Batch]:
    """The latest batches, newest first, without their (large) CNPJ lists and invalid rows."""
    return (Batch.objects.defer("cnpjs", "invalid_rows").select_related("created_by")
            .annotate(cnpjs_count=_json_length("cnpjs"), invalid_count=_json_length("invalid_rows"))
            .order_by("-created_at", "-pk")[:limit])


def batch_get(*, batch_id: int) -> Batch | None:
    """A batch with its invalid rows, without its CNPJ list (`cnpjs_count` tells how many)."""
    return (Batch.objects.defer("cnpjs").select_related("created_by").annotate(cnpjs_count=_json_length("cnpjs"))
            .filter(pk=batch_id).first())


# Progress


@dataclass(frozen=True)
class Progress:
    total: int  # checks the batch requests (or requested, when it stopped early)
    queued: int  # pending checks and those not requested yet
    running: int
    found: int
    not_found: int
    failed: int
    cached: int  # of the finished ones, answered from the shared cache
    not_requested: int  # distinct CNPJs left unchecked because the batch stopped (Batch.error)
    finished: bool
    eta_seconds: int | None = None
    eta_source: str = ""  # "limits" (the registries' rate limits) or "measured" (the recent pace)

    @property
    def done(self) -> int:
        return self.found + self.not_found + self.failed

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, self.done * 100 // self.total)

    @property
    def eta_minutes(self) -> int | None:
        return None if self.eta_seconds is None else max(1, math.ceil(self.eta_seconds / 60))


def rate_limits_throughput(limits: dict[str, str] | None = None) -> float:
    """Lookups per second the registries allow: Σ over providers of their tightest window's calls/second.

    "3/60" → 0.05/s; "1/1,60/60" → min(1/1, 60/60) = 1/s; a provider without a limit counts as
    UNLIMITED_PROVIDER_RATE (its latency bounds it instead).
    """
    limits = settings.CHECKS_RATE_LIMITS if limits is None else limits
    rate = 0.0
    for provider in CLIENTS:
        windows = [(calls, seconds) for calls, seconds in parse_limits(limits.get(provider, "")) if seconds > 0]
        rate += min(calls / seconds for calls, seconds in windows) if windows else UNLIMITED_PROVIDER_RATE
    return rate


def batch_progress(batch: Batch, *, now: datetime | None = None) -> Progress:
    """Where a batch stands, and its ETA; marks it done (status, finished_at) when nothing is left to run.

    ETA, in seconds, for the `remaining = total − finished` checks (cache hits finish as soon as
    they are requested, so the remaining ones wait for the registries):

        measured   once ≥ ETA_MIN_MEASURED of the batch's lookups (not cache hits) finished in the
                   last ETA_WINDOW seconds: rate = that count / min(ETA_WINDOW, age of the batch)
        limits     before that: rate = Σ_providers min_windows(calls / seconds) of
                   settings.CHECKS_RATE_LIMITS (see `rate_limits_throughput`)

        eta = ceil(remaining / rate)

    The limits are shared by every organization, so the first estimate is a best case; the
    measured one sees the real pace, throttling and other traffic included.
    """
    now = now or timezone.now()
    state = (Batch.objects.filter(pk=batch.pk)
             .annotate(planned=_json_length("cnpjs"))
             .values("status", "total", "error", "finished_at", "planned").first())
    if state is not None:
        batch.status, batch.total, batch.error, batch.finished_at = (
            state["status"], state["total"], state["error"], state["finished_at"])
    planned = (state or {}).get("planned") or batch.total
    statuses = {f"n_{status}": Count("pk", filter=Q(status=status)) for status in Check.Status.values}
    counts = Check.objects.filter(batch=batch).aggregate(
        **statuses, cached=Count("pk", filter=Q(cache_hit=True, status__in=Check.FINAL)),
        recent=Count("pk", filter=Q(cache_hit=False, status__in=Check.FINAL,
                                    finished_at__gte=now - timedelta(seconds=ETA_WINDOW))))
    by_status = {status: counts[f"n_{status}"] for status in Check.Status.values}
    created = sum(by_status.values())
    pending, running = by_status[Check.Status.PENDING], by_status[Check.Status.RUNNING]
    not_yet = max(batch.total - created, 0)
    finished = batch.status != Batch.Status.RUNNING or (not_yet == 0 and pending == 0 and running == 0)
    if finished and batch.status == Batch.Status.RUNNING and batch_finish(batch_id=batch.pk, now=now):
        batch.status, batch.finished_at = Batch.Status.DONE, now
    done = by_status[Check.Status.SUCCEEDED] + by_status[Check.Status.NOT_FOUND] + by_status[Check.Status.FAILED]
    eta_seconds, eta_source = None, ""
    remaining = batch.total - done
    if not finished and remaining > 0:
        if counts["recent"] >= ETA_MIN_MEASURED:
            span = max(1.0, min(float(ETA_WINDOW), (now - batch.created_at).total_seconds()))
            rate, eta_source = counts["recent"] / span, "measured"
        else:
            rate, eta_source = rate_limits_throughput(), "limits"
        eta_seconds = math.ceil(round(remaining / rate, 6)) if rate > 0 else None  # round: 42 / 2.1 is 20
    return Progress(total=batch.total, queued=pending + not_yet, running=running,
                    found=by_status[Check.Status.SUCCEEDED], not_found=by_status[Check.Status.NOT_FOUND],
                    failed=by_status[Check.Status.FAILED], cached=counts["cached"],
                    not_requested=max(planned - batch.total, 0) if batch.error else 0, finished=finished,
                    eta_seconds=eta_seconds, eta_source=eta_source)


def batch_cancel(*, batch: Batch) -> int:
    """Stop a running batch: nothing more is requested, and its checks still queued are cancelled (their
    holds released); those a worker already took finish. Returns how many checks were cancelled."""
    if not Batch.objects.filter(pk=batch.pk, status=Batch.Status.RUNNING).update(
            status=Batch.Status.CANCELLED, finished_at=timezone.now(), error=_("Cancelled."),
            total=Check.objects.filter(batch=batch).count()):
        return 0
    waiting = Check.objects.filter(batch=batch, status=Check.Status.PENDING)
    return sum(check_cancel(check) for check in waiting.only("pk", "billing_key"))


# Results


class _Echo:
    """A file-like object for csv.writer that hands back each line instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _safe(value) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (CSV injection)."""
    return str(csv_value(value))


def _when(value: datetime | None, tz) -> str:
    return value.astimezone(tz).isoformat(timespec="seconds") if value else ""


def batch_results_csv(batch: Batch, *, chunk_size: int = 1000) -> Iterator[str]:
    """The batch's results as CSV lines (UTF-8 BOM first, for spreadsheets), to stream.

    One row per distinct CNPJ, in file order (no line: duplicates were merged): its check's status,
    company, risk level, registration status, provider, time and the path of its target's page;
    then the CNPJs without a check yet (queued, or left unchecked when the batch stopped early);
    then every invalid row (line, value, reason). Texts are translated now, in the caller's
    language; rows are read `chunk_size` at a time, each read in the batch's schema, so the lines
    can be produced after the request (and its schema and language) ended.
    """
    texts = {
        "header": [_("Line"), _("Value"), _("CNPJ"), _("Label"), _("Status"), _("Company name"), _("Risk level"),
                   _("Registration status"), _("Provider"), _("Checked at"), _("Report"), _("Reason")],
        "status": {value: str(label) for value, label in Check.Status.choices},
        "risk": {value: str(label) for value, label in RiskLevel.choices},
        "reasons": {code: str(reason) for code, reason in INVALID_REASONS.items()},
        "not_checked": _("Not checked"), "queued": str(Check.Status.PENDING.label), "invalid": _("Invalid"),
        "timezone": timezone.get_current_timezone(),
    }
    return _results_lines(batch.pk, schema=connection.schema_name, slug=current_organization().slug, texts=texts,
                          chunk_size=chunk_size)


def _results_lines(batch_id: int, *, schema: str, slug: str, texts: dict, chunk_size: int) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(texts["header"])
    checks = (Check.objects.filter(batch_id=batch_id)
              .annotate(company=KeyTextTransform("razao_social", "report__data"),
                        registration=KeyTextTransform("label", KeyTransform("situacao", "report__data")))
              .values_list("pk", "target_id", "target__cnpj", "target__label", "status", "company",
                           "report__risk_level", "registration", "provider", "finished_at", "error", "report__pk")
              .order_by("pk"))
    last = 0
    requested: set[str] = set()
    while True:
        with schema_context(schema):
            rows = list(checks.filter(pk__gt=last)[:chunk_size])
        if not rows:
            break
        for (pk, target_id, cnpj, label, status, company, risk, registration, provider, finished_at, error,
             report_id) in rows:
            last = pk
            requested.add(cnpj)
            yield writer.writerow([
                "", "", cnpj_id.format_cnpj(cnpj), _safe(label), texts["status"].get(status, status), _safe(company),
                texts["risk"].get(risk, risk or ""), _safe(registration), provider,
                _when(finished_at, texts["timezone"]), f"/o/{slug}/checks/targets/{target_id}/" if report_id else "",
                _safe(error) if status == Check.Status.FAILED else ""])
    with schema_context(schema):
        batch = Batch.objects.only("cnpjs", "invalid_rows", "error").get(pk=batch_id)
        left = [cnpj for cnpj in batch.cnpjs if cnpj not in requested]
        labels = dict(Target.objects.filter(cnpj__in=left).values_list("cnpj", "label")) if left else {}
    status = texts["not_checked"] if batch.error else texts["queued"]
    for cnpj in left:
        yield writer.writerow(["", "", cnpj_id.format_cnpj(cnpj), _safe(labels.get(cnpj, "")), status, "", "", "",
                               "", "", "", _safe(batch.error)])
    for row in batch.invalid_rows:
        yield writer.writerow([row.get("line", ""), _safe(row.get("value", "")), "", "", texts["invalid"], "", "", "",
                               "", "", "", texts["reasons"].get(row.get("code"), row.get("reason", ""))])
