from django.core.management.base import BaseCommand

from accounts.services import mfa_secrets_rotate


class Command(BaseCommand):
    help = ("Re-encrypt every TOTP secret and recovery-code seed with the first of MFA_ENCRYPTION_KEYS. "
            "Run after putting a new key first; drop the old key afterwards.")

    def handle(self, *args, **options):
        rotated = mfa_secrets_rotate()
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {rotated} authenticator(s)."))
