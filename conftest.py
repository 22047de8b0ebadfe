"""Shared fixtures. Organizations for tests are session-scoped: a schema per test is too slow."""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from django.test import Client

from accounts.models import User
from tenants.audit.services import Actor
from tenants.models import Membership, Organization, Role
from tenants.services import organization_create

PASSWORD = "correct-horse-battery"


def _user(email: str) -> User:
    user, created = User.objects.get_or_create(email=email, defaults={"name": email.split("@")[0].title()})
    if created:
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
        EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


def _organization(slug: str, owner: User) -> Organization:
    org = Organization.objects.filter(slug=slug).first()
    return org or organization_create(user=owner, name=slug.replace("-", " ").title(), slug=slug,
                                      actor=Actor.system("tests"))


def on_configured_database(connection) -> bool:
    """Whether `connection` still points at the database DATABASE_URL names (not a test database)."""
    import dj_database_url
    from django.conf import settings

    return connection.settings_dict["NAME"] == dj_database_url.parse(settings.DATABASE_URL)["NAME"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, request, django_db_blocker, django_db_keepdb, django_db_createdb):
    """pytest-django's setup, plus the test database when no collected test asked for one.

    pytest-django only creates/switches to the test database if some collected test uses
    `db`, `transactional_db`, `live_server` or the `django_db` marker. The tests here use none
    of them (their wrappers would fight with subprocesses that commit), so on their own the
    connection, `tenant_world` and the servers would all use the development database.
    """
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    db_cfg = None
    if on_configured_database(connections["default"]):
        with django_db_blocker.unblock():
            db_cfg = setup_databases(
                verbosity=request.config.option.verbose, interactive=False, aliases={"default"},
                serialized_aliases=set(), keepdb=django_db_keepdb and not django_db_createdb,
            )
    yield
    if db_cfg is not None and not django_db_keepdb:
        with django_db_blocker.unblock():
            teardown_databases(db_cfg, verbosity=request.config.option.verbose)


@pytest.fixture(scope="session")
def tenant_world(django_db_setup, django_db_blocker):
    """Two committed organizations, each with an owner, an admin, a member and a viewer."""
    with django_db_blocker.unblock():
        world = {}
        for key in ("a", "b"):
            owner = _user(f"owner-{key}@example.com")
            org = _organization(f"org-{key}", owner)
            people = {"owner": owner}
            for role in (Role.ADMIN, Role.MEMBER, Role.VIEWER):
                person = _user(f"{role}-{key}@example.com")
                Membership.objects.get_or_create(user=person, organization=org, defaults={"role": role})
                people[str(role)] = person
            world[key] = {"org": org, **people}
        return world


@pytest.fixture
def org_a(tenant_world, db):
    return tenant_world["a"]["org"]


@pytest.fixture
def org_b(tenant_world, db):
    return tenant_world["b"]["org"]


@pytest.fixture
def client_for(tenant_world, db):
    """`client_for("a", "admin")`: a client signed in as that organization's member of that role."""

    def make(key: str, role: str = "owner") -> Client:
        client = Client()
        client.force_login(tenant_world[key][role])
        return client

    return make
