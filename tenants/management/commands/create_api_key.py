"""`manage.py create_api_key`: a service key, acting as the organization itself (no person; it owns
no threads and sees none: see tenants.api_base). Keys acting as a member are made on the keys page."""

from django.core.management.base import BaseCommand, CommandError

from tenants.api_keys import api_key_create
from tenants.audit.services import Actor
from tenants.models import ApiKey, Organization


class Command(BaseCommand):
    help = ("Create a service API key for an organization (it acts as the organization, not a person, and "
            "has no threads) and print it (the key is the last line of the output).")

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="the organization's slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", default="chat,checks,read",
                            help="comma-separated: " + ", ".join(value for value, _label in ApiKey.Scope.choices))

    def handle(self, *args, org, name, scopes, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        wanted = [scope.strip() for scope in scopes.split(",") if scope.strip()]
        unknown = set(wanted) - {value for value, _label in ApiKey.Scope.choices}
        if unknown:
            raise CommandError(f"Unknown scopes: {', '.join(sorted(unknown))}.")
        new = api_key_create(organization=organization, name=name, scopes=wanted, actor=Actor.system("manage.py"))
        self.stdout.write(f"Created service key {new.key.display_prefix} for {organization.slug} with scopes "
                          f"{', '.join(new.key.scopes)}. It is shown only now:")
        self.stdout.write(new.raw)
