from django.core.management.base import BaseCommand

from chat.catalog.services import provider_keys_rotate


class Command(BaseCommand):
    help = ("Re-encrypt every stored provider key with the first of PROVIDER_KEY_ENCRYPTION_KEYS. "
            "Run after putting a new key first; drop the old key afterwards.")

    def handle(self, *args, **options):
        rotated = provider_keys_rotate()
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {rotated} provider key(s)."))
