"""Read one PDF's text in a child process:
`python -m chat.pdf_child PAGES CHARS CONTENT_BYTES CPU_SECONDS MEMORY_MB < file.pdf`.

It caps its own CPU time (SIGXCPU, then SIGKILL a second later) and address space before it reads
the file, and prints `{"text": ...}` or `{"error": code}` as JSON. No Django settings are loaded here.
"""

from __future__ import annotations

import json
import resource
import sys

from chat.files import PdfUnreadable, pdf_text_read


def main(argv: list[str]) -> int:
    pages, chars, content_bytes, cpu_seconds, memory_mb = (int(value) for value in argv[1:6])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))
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
