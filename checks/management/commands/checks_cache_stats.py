"""`manage.py checks_cache_stats`: how often the shared CNPJ cache answered (hits) or not (misses)."""

from django.core.management.base import BaseCommand

from checks.cache import cache_stats


class Command(BaseCommand):
    help = "Hits and misses of the shared CNPJ cache since Redis started counting."

    def handle(self, *args, **options) -> None:
        stats = cache_stats()
        asked = stats["hits"] + stats["misses"]
        ratio = f"{100 * stats['hits'] / asked:.1f}%" if asked else "n/a"
        self.stdout.write(f"hits {stats['hits']}  misses {stats['misses']}  hit ratio {ratio}")
