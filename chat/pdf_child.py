"""Read one PDF's text in a child process: `python -m chat.pdf_child PAGES CHARS CONTENT_BYTES < file.pdf`.

The parent (chat.files) sets this process's CPU-time and memory limits before it starts; it prints
`{"text": ...}` or `{"error": code}` as JSON. No Django settings are loaded here.
"""

from __future__ import annotations

import json
import sys

from chat.files import PdfUnreadable, pdf_text_read


def main(argv: list[str]) -> int:
    pages, chars, content_bytes = (int(value) for value in argv[1:4])
    data = sys.stdin.buffer.read()
    try:
        outcome = {"text": pdf_text_read(data, pages=pages, chars=chars, content_bytes=content_bytes)}
    except PdfUnreadable as error:
        outcome = {"error": error.code}
    except MemoryError:
        outcome = {"error": "memory"}
    sys.stdout.write(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
