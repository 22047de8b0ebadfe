"""The README's first steps work as written (issue 13, item 1): seed the demo as `make run` does, create
a key with the README's command, then run the README's OpenAI SDK snippet, unchanged but for the
server's address and the key, against the production-style server."""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import pytest
from django.core.management import call_command

from .test_browser import remove_visitors

README = Path(__file__).resolve().parent.parent / "README.md"
# A fenced block in a list item is indented: the fence's indentation closes it.
SNIPPET = re.compile(r"^( *)```python\n(\1from openai import OpenAI\n.*?)^\1```", re.DOTALL | re.MULTILINE)
DEMO_EMAIL = "demo@example.com"


@pytest.fixture
def seeded_demo(django_db_blocker):
    """`make run`'s seeding, committed (the server reads it); removed afterwards."""
    with django_db_blocker.unblock():
        call_command("seed_demo", stdout=io.StringIO())
        try:
            yield
        finally:
            remove_visitors([DEMO_EMAIL])


def test_the_readme_sdk_snippet_answers_with_the_demo_organizations_key(live_server_process, seeded_demo,
                                                                        django_db_blocker):
    out = io.StringIO()
    with django_db_blocker.unblock():
        call_command("create_api_key", "--org", "demo", "--name", "laptop", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]  # the README: "the key is the last line"
    assert key.startswith("prm_")

    snippet = textwrap.dedent(SNIPPET.search(README.read_text()).group(2))
    assert 'base_url="http://127.0.0.1:8000/v1"' in snippet and 'api_key="prm_…"' in snippet
    snippet = snippet.replace("http://127.0.0.1:8000", live_server_process.url).replace("prm_…", key)
    *statements, expression = snippet.strip().splitlines()
    namespace: dict = {}
    exec("\n".join(statements), namespace)
    completion = eval(expression, namespace)

    assert completion.model == "demo/prumo-demo"
    assert completion.choices[0].finish_reason == "stop"
    assert "built-in demo model" in completion.choices[0].message.content
