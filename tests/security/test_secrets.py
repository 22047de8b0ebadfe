"""Production refuses to start with a default, published or weak SECRET_KEY or without keys for secrets at rest.

Each case starts Django with `config.settings.prod` in a subprocess, as a server would.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = "postgresql://u@db.internal/prumo"
HOW_TO_GENERATE = "secrets.token_urlsafe(50)"
ENCRYPTION_KEYS = ("PROVIDER_KEY_ENCRYPTION_KEYS", "MFA_ENCRYPTION_KEYS")  # provider keys, TOTP secrets


def _start(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"SECRET_KEY", "DATABASE_URL", *ENCRYPTION_KEYS, "DJANGO_SETTINGS_MODULE"}}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings.prod", **env},
    )


def _good(**overrides: str) -> dict[str, str]:
    env = {"SECRET_KEY": secrets.token_urlsafe(50), "DATABASE_URL": DATABASE_URL,
           **{name: Fernet.generate_key().decode() for name in ENCRYPTION_KEYS}}
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def _published_secret_keys() -> set[str]:
    """SECRET_KEY values written in the repository's settings, compose file, Dockerfile and README."""
    base = (ROOT / "config/settings/base.py").read_text()
    found = set(re.findall(r'os\.environ\.get\("SECRET_KEY", "([^"]+)"\)', base))
    for name in ("Dockerfile", "README.md", "Makefile", ".env.example"):
        path = ROOT / name
        if path.exists():
            found |= set(re.findall(r"\bSECRET_KEY=([^\s\"'$\\]+)", path.read_text()))
    return found | {"local-compose-secret-change-me", "build-only-not-secret"}  # the compose file's and build's, of old


@pytest.mark.parametrize("value", sorted(_published_secret_keys()))
def test_a_published_secret_key_is_refused(value):
    result = _start(**_good(SECRET_KEY=value))
    assert result.returncode != 0 and "started" not in result.stdout
    assert "SECRET_KEY is a default or published value" in result.stderr
    assert HOW_TO_GENERATE in result.stderr


@pytest.mark.parametrize(("value", "reason"), [
    ("django-insecure-" + secrets.token_urlsafe(50), "is a default or published value"),
    (secrets.token_urlsafe(50)[:49], "is too weak"),
    ("x" * 60, "is too weak"),
])
def test_an_insecure_or_short_secret_key_is_refused(value, reason):
    result = _start(**_good(SECRET_KEY=value))
    assert result.returncode != 0
    assert f"SECRET_KEY {reason}" in result.stderr and HOW_TO_GENERATE in result.stderr


def test_a_missing_secret_key_is_refused_with_how_to_make_one():
    result = _start(**_good(SECRET_KEY=None))
    assert result.returncode != 0
    assert "SECRET_KEY must be set in production" in result.stderr and HOW_TO_GENERATE in result.stderr


@pytest.mark.parametrize("variable", ENCRYPTION_KEYS)
@pytest.mark.parametrize(("value", "reason"), [
    (None, "must be set in production"),
    ("", "must be set in production"),
    ("not-a-fernet-key", "must list Fernet keys"),
    (Fernet.generate_key().decode() + ",short", "must list Fernet keys"),
])
def test_encryption_keys_are_required(variable, value, reason):
    result = _start(**_good(**{variable: value}))
    assert result.returncode != 0
    assert f"{variable} {reason}" in result.stderr
    assert "Fernet.generate_key()" in result.stderr


def test_a_good_environment_starts():
    two_keys = f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}"
    result = _start(**_good(PROVIDER_KEY_ENCRYPTION_KEYS=two_keys))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_make_serve_generates_values_production_accepts():
    """`make serve` writes .data/{secret,provider,mfa}_key with these commands and passes them."""
    makefile = (ROOT / "Makefile").read_text()
    commands = dict(re.findall(r'^\.data/(\w+):.*\n\t@mkdir -p \.data && \$\(PY\) -c "([^"]+)" > \$@', makefile, re.M))
    assert set(commands) >= {"secret_key", "provider_key", "mfa_key"}
    serve_env = makefile.split("SERVE_ENV :=", 1)[1].split("\n\n", 1)[0]
    assert all(f"{name}=" in serve_env for name in ("SECRET_KEY", *ENCRYPTION_KEYS))
    generated = {name: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout.strip() for name, code in commands.items()}
    result = _start(SECRET_KEY=generated["secret_key"], PROVIDER_KEY_ENCRYPTION_KEYS=generated["provider_key"],
                    MFA_ENCRYPTION_KEYS=generated["mfa_key"], DATABASE_URL=DATABASE_URL)
    assert result.returncode == 0, result.stderr


def test_compose_has_no_default_secret_and_asks_for_both():
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    for name in ("web", "worker", "generator", "beat"):
        env = services[name]["environment"]
        for variable in ("SECRET_KEY", *ENCRYPTION_KEYS):
            # `${NAME:?message}`: compose refuses to start without the value instead of using a default.
            assert env[variable].startswith(f"${{{variable}:?"), (name, variable, env[variable])
    assert HOW_TO_GENERATE in text and "Fernet.generate_key()" in text
