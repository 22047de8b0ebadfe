"""Chat attachments are typed by their bytes, risky formats are refused, and their text is read and fitted."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.utils.functional import Promise
from pypdf import PdfReader, PdfWriter

from chat import files
from chat.files import (
    CSV,
    JPEG,
    MARKDOWN,
    PDF,
    PNG,
    TEXT,
    WEBP,
    FileKind,
    FileRefused,
    file_sniff,
    file_text,
    text_fit,
    tokens_estimate,
)

UNSUPPORTED = "This file type is not supported. Upload text, Markdown, CSV, PDF, PNG, JPEG or WebP."
PDF_UNREADABLE = "We could not read the text of this PDF."

PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb"
WEBP_BYTES = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00\x30\x01\x00\x9d\x01\x2a\x01\x00\x01\x00"
GIF_BYTES = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00"


def pdf_bytes(*pages: str) -> bytes:
    """A minimal, valid PDF with one Helvetica text line per page (xref offsets computed)."""
    count = len(pages)
    page_ids = [4 + 2 * index for index in range(count)]
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % pid for pid in page_ids) + b"] /Count %d >>" % count,
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for pid, text in zip(page_ids, pages, strict=True):
        stream = b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"
        objects[pid] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
                        b" /Contents %d 0 R >>" % (pid + 1))
        objects[pid + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def pdf_encrypted(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes("Top secret plans"))))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-128")
    output = io.BytesIO()
    writer.write(output)
    return output.getvalue()


def docx_bytes() -> bytes:
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("word/document.xml", "<w:document>hello</w:document>")
    return output.getvalue()


def refusal(data: bytes, filename: str) -> str:
    with pytest.raises(FileRefused) as caught:
        file_sniff(data, filename)
    return str(caught.value.reason)


# ---------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("data", "filename", "kind"),
    [
        (PNG_BYTES, "photo.png", PNG),
        (JPEG_BYTES, "photo.JPG", JPEG),
        (WEBP_BYTES, "photo.webp", WEBP),
        (b"%PDF-1.7\n...", "report.pdf", PDF),
        (PNG_BYTES, "notes.txt", PNG),
        (JPEG_BYTES, "no-extension", JPEG),
        (b"plain words, not a picture\n", "picture.png", TEXT),
        (b"%PDF-1.4 is a header", "fake.txt", PDF),
    ],
)
def test_content_decides_the_kind_not_the_name(data, filename, kind):
    assert file_sniff(data, filename) == kind


def test_kinds_carry_canonical_content_types():
    assert {kind.kind: (kind.content_type, kind.is_image) for kind in (TEXT, MARKDOWN, CSV, PDF, PNG, JPEG, WEBP)} == {
        "text": ("text/plain; charset=utf-8", False),
        "markdown": ("text/markdown; charset=utf-8", False),
        "csv": ("text/csv; charset=utf-8", False),
        "pdf": ("application/pdf", False),
        "png": ("image/png", True),
        "jpeg": ("image/jpeg", True),
        "webp": ("image/webp", True),
    }
    with pytest.raises(AttributeError):
        TEXT.kind = "pdf"  # type: ignore[misc]
    assert isinstance(TEXT, FileKind)


def test_utf8_text_with_bom():
    data = "\ufeffOlá, ação e coração\r\nsegunda linha\n".encode()
    assert file_sniff(data, "notes.txt") == TEXT
    assert file_text(data, TEXT) == "Olá, ação e coração\r\nsegunda linha\n"


def test_markdown_by_extension():
    data = b"# Title\n\n- item\n"
    assert file_sniff(data, "README.md") == MARKDOWN
    assert file_sniff(data, "dir/Notes.Markdown") == MARKDOWN
    assert file_sniff(data, "notes.txt") == TEXT
    assert file_text(data, MARKDOWN) == "# Title\n\n- item\n"


def test_csv_by_extension_when_it_parses():
    data = 'name,city\n"Silva, Ana",Recife\nBruno,"São\nPaulo"\n'.encode()
    assert file_sniff(data, "people.csv") == CSV
    assert file_sniff(data, "C:\\Users\\me\\people.CSV") == CSV
    assert file_text(data, "csv") == data.decode()


def test_csv_that_does_not_parse_is_plain_text():
    data = b"id,blob\n1,\"" + b"x" * 200_000 + b"\"\n"
    assert file_sniff(data, "huge-field.csv") == TEXT


def test_a_few_control_characters_are_still_text():
    data = b"\x1b[32mOK\x1b[0m build passed after a long log line full of ordinary characters\n" * 3
    assert file_sniff(data, "build.log") == TEXT


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "page.txt"),
        (b"\n\n   <html><body>hi</body></html>", "notes.md"),
        ("\ufeff<!doctype HTML>\n<p>hi</p>".encode(), "notes.txt"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>', "drawing.txt"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "drawing.svg"),
        (b'<?xml version="1.0"?><note>hi</note>', "data.csv"),
        (docx_bytes(), "letter.docx"),
        (docx_bytes(), "letter.txt"),
        (b"PK\x05\x06" + b"\x00" * 18, "empty.zip"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 32, "old.doc"),
        (GIF_BYTES, "anim.gif"),
        (b"GIF89a textual looking gif header", "anim.txt"),
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff", "setup.exe"),
        (b"\x7fELF\x02\x01\x01\x00", "program"),
        (b"text with a NUL \x00 in the middle", "data.txt"),
        (b"\xff\xfeh\x00i\x00", "utf16.txt"),
        (b"caf\xe9 latin-1 is not utf-8", "latin1.txt"),
        (bytes(range(1, 32)) * 4, "controls.txt"),
        (b"BM6\x00\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00", "image.bmp"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "sound.wav"),
    ],
)
def test_unsupported_files_are_refused(data, filename):
    assert refusal(data, filename) == UNSUPPORTED


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"  \n\t\n"])
def test_empty_files_are_refused(data):
    assert refusal(data, "empty.txt") == "The file is empty."


def test_refusal_messages_are_translated_when_shown():
    for data in (b"", GIF_BYTES):
        with pytest.raises(FileRefused) as caught:
            file_sniff(data, "x.txt")
        assert isinstance(caught.value.reason, Promise)
        assert str(caught.value) == str(caught.value.reason)


# ---------------------------------------------------------------- text


def test_pdf_text_is_extracted_page_by_page():
    data = pdf_bytes("Hello from page one", "And page two")
    assert file_sniff(data, "upload.bin") == PDF
    assert file_text(data, PDF) == "Hello from page one\n\nAnd page two"


def test_pdf_with_an_empty_user_password_is_read():
    assert file_text(pdf_encrypted(""), PDF) == "Top secret plans"


def test_encrypted_pdf_is_refused_with_a_clear_message():
    data = pdf_encrypted("s3cret")
    assert file_sniff(data, "secret.pdf") == PDF
    with pytest.raises(FileRefused) as caught:
        file_text(data, PDF)
    assert str(caught.value.reason) == PDF_UNREADABLE


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\nnot really a pdf",
        b"%PDF-1.4\n%%EOF\n",
        pdf_bytes("Truncated document")[:150],
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
    ],
)
def test_broken_pdf_is_refused(data):
    with pytest.raises(FileRefused) as caught:
        file_text(data, PDF)
    assert str(caught.value.reason) == PDF_UNREADABLE


def test_pdf_reading_stops_at_the_page_limit(monkeypatch):
    monkeypatch.setattr(files, "PDF_PAGE_LIMIT", 2)
    assert file_text(pdf_bytes("one", "two", "three"), PDF) == "one\n\ntwo"


def test_pdf_reading_stops_at_the_character_limit(monkeypatch):
    monkeypatch.setattr(files, "PDF_CHAR_LIMIT", 10)
    assert file_text(pdf_bytes("0123456789abcdef", "never read"), PDF) == "0123456789"


def test_images_have_no_text():
    with pytest.raises(ValueError):
        file_text(PNG_BYTES, PNG)


# ---------------------------------------------------------------- token budget


def test_tokens_estimate_is_about_four_bytes_a_token():
    assert tokens_estimate("") == 0
    assert tokens_estimate("abc") == 1
    assert tokens_estimate("abcd") == 1
    assert tokens_estimate("abcde") == 2
    assert tokens_estimate("x" * 4000) == 1000
    assert tokens_estimate("日本語の文章") == 5  # 18 bytes: non-Latin scripts are not underestimated


def test_text_that_fits_is_untouched():
    text = "short text\nthat fits"
    assert text_fit(text, tokens_estimate(text)) == (text, False)
    assert text_fit("", 0) == ("", False)


def test_text_is_cut_at_a_line_break():
    text = "first line here\nsecond line here\nthird line here\n"
    fitted, truncated = text_fit(text, 9)  # 36 bytes: into the third line
    assert (fitted, truncated) == ("first line here\nsecond line here", True)
    assert tokens_estimate(fitted) <= 9


def test_text_is_cut_at_a_word_when_no_line_break_is_near():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    fitted, truncated = text_fit(text, 5)  # 20 bytes: "alpha beta gamma del"
    assert (fitted, truncated) == ("alpha beta gamma", True)


def test_text_without_boundaries_is_cut_at_the_budget():
    fitted, truncated = text_fit("x" * 100, 5)
    assert (fitted, truncated) == ("x" * 20, True)


def test_cut_never_splits_a_multibyte_character():
    fitted, truncated = text_fit("ç" * 100, 5)  # 2 bytes each: 10 fit
    assert (fitted, truncated) == ("ç" * 10, True)
    fitted, _ = text_fit("aç" * 100, 1)  # 4 bytes fit: "aça" is 4 bytes, no half "ç"
    assert fitted == "aça"


def test_zero_budget_gives_nothing():
    assert text_fit("something", 0) == ("", True)


def test_large_pdf_text_fits_a_budget():
    text = file_text(pdf_bytes(*(f"Page {n} words words words" for n in range(1, 30))), PDF)
    fitted, truncated = text_fit(text, 50)
    assert truncated and tokens_estimate(fitted) <= 50 and fitted.endswith(("words", "Page"))
