"""Chat attachments: what a file is (by its bytes, never its declared type) and what text it holds.

Browsers and clients report whatever content type they like, so an upload is typed by sniffing its
content, and anything a browser could execute or render as a document (HTML, SVG, XML) is refused.
Pure functions: no models, no database.
"""

from __future__ import annotations

import csv
import io
import math
import unicodedata
from dataclasses import dataclass
from itertools import islice

from django.utils.functional import Promise
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
    "file_sniff",
    "file_text",
    "text_fit",
    "tokens_estimate",
]

PDF_PAGE_LIMIT = 500
PDF_CHAR_LIMIT = 2_000_000
# Share of control characters (other than tab, newlines and form feed) above which "text" is binary.
CONTROL_CHAR_RATIO = 0.05
TEXT_CONTROLS = frozenset("\t\n\r\f")
MARKUP_PREFIXES = ("<!doctype", "<html", "<svg", "<?xml", "<head", "<body", "<script")
MARKUP_SNIFF_CHARS = 1024
CHARS_PER_TOKEN = 4

UNSUPPORTED = _("This file type is not supported. Upload text, Markdown, CSV, PDF, PNG, JPEG or WebP.")
EMPTY = _("The file is empty.")
PDF_UNREADABLE = _("We could not read the text of this PDF.")


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


def _pdf_text(data: bytes) -> str:
    """The PDF's text, page by page, stopping at a page and a character limit (decompression bombs)."""
    try:
        reader = PdfReader(io.BytesIO(data))
        # Encrypted with an empty user password (owner restrictions only) is readable; a real password is not.
        locked = reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED
        if locked or len(reader.pages) == 0:
            raise FileRefused(PDF_UNREADABLE)
        pages: list[str] = []
        size = 0
        for page in islice(reader.pages, PDF_PAGE_LIMIT):
            if size >= PDF_CHAR_LIMIT:
                break
            text = (page.extract_text() or "").strip()
            if text:
                pages.append(text[: PDF_CHAR_LIMIT - size])
                size += len(pages[-1]) + 2
    except FileRefused:
        raise
    except Exception as error:
        # Any failure of the parser on an untrusted file means the same thing to the user.
        raise FileRefused(PDF_UNREADABLE) from error
    return "\n\n".join(pages)


def file_text(data: bytes, kind: FileKind | str) -> str:
    """The text of a text, Markdown, CSV or PDF file already typed by `file_sniff`.

    A PDF without a text layer (a scan) gives an empty string. Images have no text: ValueError.
    """
    kind = KINDS[kind] if isinstance(kind, str) else kind
    if kind.is_image:
        raise ValueError(f"{kind.kind} files have no text")
    if kind == PDF:
        return _pdf_text(data)
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
