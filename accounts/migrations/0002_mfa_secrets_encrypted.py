"""TOTP secrets and recovery-code seeds stored before `MFAAdapter` were plaintext: encrypt them."""

from cryptography.fernet import InvalidToken
from django.db import migrations


def _rewrite(apps, transform) -> None:
    for authenticator in apps.get_model("mfa", "Authenticator").objects.filter(type__in=["totp", "recovery_codes"]):
        data = authenticator.data
        for name in ("secret", "seed"):
            if isinstance(data.get(name), str):
                data[name] = transform(data[name])
        if isinstance(data.get("migrated_codes"), list):
            data["migrated_codes"] = [transform(code) for code in data["migrated_codes"]]
        authenticator.save(update_fields=["data"])


def encrypt_plaintext(apps, schema_editor):
    from accounts.adapters import mfa_fernet

    fernet = mfa_fernet()

    def encrypt(value: str) -> str:
        try:
            fernet.decrypt(value.encode())
        except InvalidToken:
            return fernet.encrypt(value.encode()).decode()
        return value  # already encrypted

    _rewrite(apps, encrypt)


def decrypt_to_plaintext(apps, schema_editor):
    from accounts.adapters import mfa_fernet

    fernet = mfa_fernet()
    _rewrite(apps, lambda value: fernet.decrypt(value.encode()).decode())


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0001_initial"),
        ("mfa", "0003_authenticator_type_uniq"),
    ]

    operations = [migrations.RunPython(encrypt_plaintext, decrypt_to_plaintext)]
