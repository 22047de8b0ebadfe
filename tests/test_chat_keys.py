"""Organizations' own provider keys (encrypted, rotated), upload storage on S3, production defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from cryptography.fernet import Fernet
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django_tenants.utils import schema_context

from chat.catalog.crypto import key_decrypt
from chat.catalog.models import ProviderKey
from chat.catalog.selectors import provider_keys_for
from chat.models import Attachment
from core.redis_clients import redis_client

from .fake_llm import Answer, FakeAnthropic
from .servers import production_secrets

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-ant-org-own-key-1234"


@pytest.fixture(autouse=True)
def clean_redis():
    for key in redis_client().scan_iter("chat:*"):
        redis_client().delete(key)


def test_admin_adds_a_key_that_is_encrypted_and_never_shown_again(client_for, org_a):
    client = client_for("a", "admin")
    response = client.post(f"/o/{org_a.slug}/settings/ai-providers/", {"provider": "anthropic", "secret": SECRET})
    assert response.status_code == 302
    row = ProviderKey.objects.get(organization=org_a, provider="anthropic")
    assert SECRET not in row.encrypted_key and key_decrypt(row.encrypted_key) == SECRET
    page = client.get(f"/o/{org_a.slug}/settings/ai-providers/").content.decode()
    assert "…1234" in page and SECRET not in page and "sk-ant-org" not in page
    with schema_context(org_a.schema_name):
        from tenants.audit.models import AuditEvent

        assert AuditEvent.objects.filter(action="provider_key.created").exists()


def test_members_cannot_manage_keys(client_for, org_a):
    response = client_for("a", "member").post(f"/o/{org_a.slug}/settings/ai-providers/",
                                              {"provider": "openai", "secret": "sk-should-not-save"})
    assert response.status_code == 403
    assert not ProviderKey.objects.filter(organization=org_a, provider="openai").exists()


def test_own_key_unlocks_the_provider_and_is_the_one_sent(client_for, org_a, settings,
                                                           django_capture_on_commit_callbacks):
    from billing.models import BillingAccount, Plan

    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    fake = FakeAnthropic(Answer(["Claude here"])).start()
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "anthropic": {"base_url": fake.url, "api_key": ""}}
    try:
        client = client_for("a", "owner")
        assert 'value="anthropic/claude-haiku-4-5"' not in client.get(f"/o/{org_a.slug}/chat/").content.decode()
        with django_capture_on_commit_callbacks(execute=True):  # committed: every process's snapshot is renewed
            client.post(f"/o/{org_a.slug}/settings/ai-providers/", {"provider": "anthropic", "secret": SECRET})
        assert 'value="anthropic/claude-haiku-4-5"' in client.get(f"/o/{org_a.slug}/chat/").content.decode()
        with django_capture_on_commit_callbacks(execute=True):
            client.post(f"/o/{org_a.slug}/chat/new/", {"model": "anthropic/claude-haiku-4-5", "content": "Hi"})
        assert fake.count >= 1
        sent = fake.requests[0].headers
        assert SECRET in (sent.get("x-api-key"), sent.get("authorization", "")[7:])
    finally:
        fake.stop()


def test_rotation_reencrypts_every_key_with_the_newest_key(org_a, org_b, settings, tenant_world):
    from chat.catalog.services import provider_key_set
    from tenants.audit.services import Actor

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.PROVIDER_KEY_ENCRYPTION_KEYS = [old]
    owner = tenant_world["a"]["owner"]
    provider_key_set(organization=org_a, provider="openai", secret="sk-a-1111", user=owner, actor=Actor.system())
    provider_key_set(organization=org_b, provider="gemini", secret="gm-b-2222", user=owner, actor=Actor.system())
    before = dict(ProviderKey.objects.values_list("pk", "encrypted_key"))
    settings.PROVIDER_KEY_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_provider_keys")
    after = dict(ProviderKey.objects.values_list("pk", "encrypted_key"))
    assert all(after[pk] != before[pk] for pk in before)
    settings.PROVIDER_KEY_ENCRYPTION_KEYS = [new]  # the old key is gone: everything still decrypts
    assert provider_keys_for(org_a)["openai"] == "sk-a-1111"
    assert provider_keys_for(org_b)["gemini"] == "gm-b-2222"


def test_uploads_go_to_s3_under_the_organization_schema(client_for, org_a, settings, tenant_world):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    try:
        boto3.client("s3", endpoint_url=endpoint, **credentials).create_bucket(Bucket="prumo-uploads")
        settings.STORAGES = {**settings.STORAGES, "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "prumo-uploads", "endpoint_url": endpoint, "access_key": "test",
                        "secret_key": "test", "region_name": "us-east-1", "default_acl": "private"},
        }}
        from chat.services import attachment_upload

        with schema_context(org_a.schema_name):
            attachment = attachment_upload(organization=org_a, thread=None, user=tenant_world["a"]["owner"],
                                           upload=SimpleUploadedFile("data.csv", b"a,b\n1,2\n"))
            name = attachment.file.name
        objects = boto3.client("s3", endpoint_url=endpoint, **credentials).list_objects_v2(Bucket="prumo-uploads")
        assert [o["Key"] for o in objects["Contents"]] == [name]
        assert name.startswith(f"{org_a.schema_name}/chat/")
        download = client_for("a", "owner").get(f"/o/{org_a.slug}/chat/files/{attachment.token}/")
        assert download.status_code == 200 and b"".join(download.streaming_content) == b"a,b\n1,2\n"
    finally:
        server.stop()
        with schema_context(org_a.schema_name):
            Attachment.objects.filter(file__startswith=f"{org_a.schema_name}/chat/").delete()


def _prod_setting(name: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_SETTINGS"))}
    code = f"from django.conf import settings; print(settings.{name})"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT, capture_output=True, text=True,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings.prod", **production_secrets(),
             "DATABASE_URL": "postgresql://u@db.internal/prumo", **env}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_demo_model_is_off_in_production_unless_enabled():
    assert _prod_setting("CHAT_DEMO_MODEL_ENABLED") == "False"
    assert _prod_setting("CHAT_DEMO_MODEL_ENABLED", CHAT_DEMO_MODEL="1") == "True"
