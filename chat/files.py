"""Chat attachments: what a file is (by its bytes, never its declared type) and what text it holds.

Browsers and clients report whatever content type they like, so an upload is typed by sniffing its
content, and anything a browser could execute or render as a document (HTML, SVG, XML) is refused.
Pure functions: no models, no database. A PDF is parsed in a child process with a CPU-time and memory limit
(chat.pdf_child): a small file can hold enough operators to keep a parser busy for minutes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from django.conf import settings
from django.utils.functional import Promise, lazy
from django.utils.translation import gettext_lazy as _
from pypdf import PasswordType, PdfReader

__all__ = [
    "CSV",
    "JPEG",
    "MARKDOWN",
    "PDF",
    "PNG",
    "TEXT",
    "WEBP",
    "FileKind",
    "FileRefused",
    "PdfLimits",
    "PdfUnreadable",
    "file_sniff",
    "file_text",
    "text_fit",
    "tokens_estimate",
]

PDF_PAGE_LIMIT = 500
PDF_CHAR_LIMIT = 2_000_000
# Decoded content-stream bytes over the pages read, a stream counted once per page that uses it: pypdf
# parses each page's operators, so this bounds the parsing work before any of it starts.
PDF_CONTENT_LIMIT = 8 * 1024 * 1024
# Share of control characters (other than tab, newlines and form feed) above which "text" is binary.
CONTROL_CHAR_RATIO = 0.05
TEXT_CONTROLS = frozenset("\t\n\r\f")
MARKUP_PREFIXES = ("<!doctype", "<html", "<svg", "<?xml", "<head", "<body", "<script")
MARKUP_SNIFF_CHARS = 1024
CHARS_PER_TOKEN = 4

UNSUPPORTED = _("This file type is not supported. Upload text, Markdown, CSV, PDF, PNG, JPEG or WebP.")
EMPTY = _("The file is empty.")
PDF_UNREADABLE = _("We could not read the text of this PDF.")
PDF_OVER_LIMITS = _("This PDF could not be read within the limits: %(reason)s. Try a smaller file or paste the text.")
PDF_LIMIT_REASONS = {
    "content": _("its pages hold too many drawing instructions"),
    "cpu": _("reading it took too long"),
    "memory": _("reading it needed too much memory"),
}


def _format(message: str, **values: str) -> str:
    return str(message) % {name: str(value) for name, value in values.items()}


# Formatted when shown, so the reason is in the reader's language (FileRefused.reason stays lazy).
_lazy_format = lazy(_format, str)


class FileRefused(Exception):
    """An upload we do not accept; `reason` is a translatable message for the user."""

    def __init__(self, reason: str | Promise) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FileKind:
    """A sniffed file type and the content type we store and serve it with."""

    kind: str
    content_type: str

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    @property
    def has_text(self) -> bool:
        return not self.is_image


TEXT = FileKind("text", "text/plain; charset=utf-8")
MARKDOWN = FileKind("markdown", "text/markdown; charset=utf-8")
CSV = FileKind("csv", "text/csv; charset=utf-8")
PDF = FileKind("pdf", "application/pdf")
PNG = FileKind("png", "image/png")
JPEG = FileKind("jpeg", "image/jpeg")
WEBP = FileKind("webp", "image/webp")
KINDS = {kind.kind: kind for kind in (TEXT, MARKDOWN, CSV, PDF, PNG, JPEG, WEBP)}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PDF_SIGNATURE = b"%PDF-"
# Binary formats refused outright, whatever their bytes happen to decode as: GIF, ZIP (and so docx,
# xlsx, odt...), legacy Office (OLE), ELF and Mach-O executables.
REFUSED_SIGNATURES = (b"GIF87a", b"GIF89a", b"PK\x03\x04", b"PK\x05\x06", b"\xd0\xcf\x11\xe0", b"\x7fELF",
                      b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf")


def _binary_kind(data: bytes) -> FileKind | None:
    """The kind given by the file's magic number, for the binary formats we accept."""
    if data.startswith(PDF_SIGNATURE):
        return PDF
    if data.startswith(PNG_SIGNATURE):
        return PNG
    if data.startswith(JPEG_SIGNATURE):
        return JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def _decode_text(data: bytes) -> str | None:
    """The file as UTF-8 text (BOM dropped), or None when it looks binary."""
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    controls = sum(1 for char in text if char not in TEXT_CONTROLS and unicodedata.category(char) == "Cc")
    if controls > len(text) * CONTROL_CHAR_RATIO:
        return None
    return text


def _is_markup(text: str) -> bool:
    """HTML, SVG or XML: browsers render or run these, so they are not accepted as text."""
    head = text[:MARKUP_SNIFF_CHARS].lstrip().lower()
    return head.startswith(MARKUP_PREFIXES)


def _parses_as_csv(text: str) -> bool:
    try:
        for _row in csv.reader(io.StringIO(text, newline="")):
            pass
    except csv.Error:
        return False
    return True


def _extension(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def file_sniff(data: bytes, filename: str) -> FileKind:
    """What the upload is, from its content; the filename only tells Markdown and CSV from plain text.

    Raises FileRefused for an empty (or blank) file and for anything not in KINDS.
    """
    if not data:
        raise FileRefused(EMPTY)
    kind = _binary_kind(data)
    if kind is not None:
        return kind
    text = None if data.startswith(REFUSED_SIGNATURES) else _decode_text(data)
    if text is None or _is_markup(text):
        raise FileRefused(UNSUPPORTED)
    if not text.strip():
        raise FileRefused(EMPTY)
    extension = _extension(filename)
    if extension in ("md", "markdown"):
        return MARKDOWN
    if extension == "csv" and _parses_as_csv(text):
        return CSV
    return TEXT


class PdfUnreadable(Exception):
    """Raised by `pdf_text_read`; `code` is "unreadable" or a key of PDF_LIMIT_REASONS (no Django needed)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class PdfLimits:
    """What reading one PDF may cost: pages and characters read (beyond them the text is cut), decoded
    content-stream bytes (beyond them the file is refused), and the child process's CPU time and memory."""

    pages: int
    chars: int
    content_bytes: int
    cpu_seconds: int
    memory_mb: int

    @classmethod
    def current(cls) -> PdfLimits:
        return cls(pages=PDF_PAGE_LIMIT, chars=PDF_CHAR_LIMIT,
                   content_bytes=getattr(settings, "CHAT_PDF_CONTENT_BYTES", PDF_CONTENT_LIMIT),
                   cpu_seconds=getattr(settings, "CHAT_PDF_CPU_SECONDS", 10),
                   memory_mb=getattr(settings, "CHAT_PDF_MEMORY_MB", 512))


def _content_size(page) -> int:
    """The decoded size of a page's content streams (pypdf caches the decoded data of a shared stream)."""
    contents = page.get("/Contents")
    if contents is None:
        return 0
    contents = contents.get_object()
    streams = contents if isinstance(contents, list) else [contents]
    return sum(len(stream.get_object().get_data()) for stream in streams)


def pdf_text_read(data: bytes, *, pages: int, chars: int, content_bytes: int) -> str:
    """The PDF's text, page by page, cut at `pages` and `chars`; raises PdfUnreadable. Runs in chat.pdf_child."""
    try:
        reader = PdfReader(io.BytesIO(data))
        # Encrypted with an empty user password (owner restrictions only) is readable; a real password is not.
        locked = reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED
        if locked or len(reader.pages) == 0:
            raise PdfUnreadable("unreadable")
        selected = list(islice(reader.pages, pages))
        if sum(_content_size(page) for page in selected) > content_bytes:
            raise PdfUnreadable("content")
        texts: list[str] = []
        size = 0
        for page in selected:
            if size >= chars:
                break
            text = (page.extract_text() or "").strip()
            if text:
                texts.append(text[: chars - size])
                size += len(texts[-1]) + 2
    except (PdfUnreadable, MemoryError):
        raise
    except Exception as error:
        # Any failure of the parser on an untrusted file means the same thing to the user.
        raise PdfUnreadable("unreadable") from error
    return "\n\n".join(texts)


def _refused(code: str) -> FileRefused:
    if code in PDF_LIMIT_REASONS:
        return FileRefused(_lazy_format(PDF_OVER_LIMITS, reason=PDF_LIMIT_REASONS[code]))
    return FileRefused(PDF_UNREADABLE)


def _pdf_text(data: bytes, limits: PdfLimits) -> str:
    """Read the PDF in a child process under `limits`; raises FileRefused with the reason for the person."""
    # The child caps its own CPU time and memory before it reads a byte (no preexec_fn: workers use threads).
    command = [sys.executable, "-m", "chat.pdf_child", str(limits.pages), str(limits.chars), str(limits.content_bytes),
               str(limits.cpu_seconds), str(limits.memory_mb)]
    # A wall-clock backstop for a child that sleeps or blocks instead of computing.
    wall = limits.cpu_seconds * 3 + 5
    try:
        child = subprocess.run(command, input=data, capture_output=True, timeout=wall, check=False,
                               cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise _refused("cpu") from None
    if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise _refused("cpu")
    try:
        outcome = json.loads(child.stdout)
    except ValueError:
        raise _refused("memory" if b"MemoryError" in child.stderr else "unreadable") from None
    if "error" in outcome:
        raise _refused(outcome["error"])
    return outcome["text"]


def file_text(data: bytes, kind: FileKind | str, *, limits: PdfLimits | None = None) -> str:
    """The text of a text, Markdown, CSV or PDF file already typed by `file_sniff`.

    A PDF is read in a child process within `limits` (default: PdfLimits.current()); one without a text
    layer (a scan) gives an empty string. Images have no text: ValueError.
    """
    kind = KINDS[kind] if isinstance(kind, str) else kind
    if kind.is_image:
        raise ValueError(f"{kind.kind} files have no text")
    if kind == PDF:
        return _pdf_text(data, limits or PdfLimits.current())
    return data.decode("utf-8-sig", errors="replace")


def tokens_estimate(text: str) -> int:
    """An estimate of the tokens in `text`, not a count: one token per 4 bytes of UTF-8.

    No tokenizer can be downloaded here. Counting bytes rather than characters keeps the estimate
    from falling far short for non-Latin scripts, where a character is often a whole token.
    """
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)


def text_fit(text: str, budget_tokens: int) -> tuple[str, bool]:
    """`text` cut to fit `budget_tokens` (by `tokens_estimate`), and whether it was cut.

    The cut falls at the last line break, else the last space, in the second half of what fits, so
    the text does not end mid-word; with neither there it falls at the budget itself.
    """
    if tokens_estimate(text) <= budget_tokens:
        return text, False
    if budget_tokens <= 0:
        return "", True
    fitting = text.encode("utf-8")[: budget_tokens * CHARS_PER_TOKEN].decode("utf-8", errors="ignore")
    half = len(fitting) // 2
    for separator in ("\n", " "):
        cut = fitting.rfind(separator)
        if cut > half:
            return fitting[:cut].rstrip(), True
    return fitting, True
