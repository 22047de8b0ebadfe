"""Which schemas are behind the migration graph, and which have drifted in structure.

Both checks answer for every schema at once with a constant number of queries, so a
deploy with thousands of organizations can skip everything that is already up to date
instead of running `migrate_schemas` over all of them (0.1-0.2 s per schema even when
nothing is pending; see bench/RESULTS.md).

What each schema is expected to have recorded in its `django_migrations` (verified on a
real database after `migrate_schemas --shared` and after `schema_provision`):

- `public`: every node of the migration graph. `migrate_schemas --shared` runs Django's
  `migrate` over all installed apps; `TenantSyncRouter` only turns the tenant apps'
  operations into no-ops, and Django records those migrations as applied all the same
  (public holds `audit.0001_initial` although the `audit` tables live in tenant schemas).
- a tenant schema: every node as well. `migrate_schemas` records the shared apps'
  migrations there (as no-ops), and `schema_provision` copies those rows from `public`.

So "behind" means: some graph node is not recorded in that schema (a squashed migration
also counts as recorded when everything it replaces is). That is what
`migrate`/`migrate_schemas` would want to apply there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.migrations.loader import MigrationLoader
from django_tenants.utils import get_public_schema_name, get_tenant_model, schema_context

__all__ = [
    "DriftReport",
    "ExpectedMigrations",
    "MigrationStatus",
    "SchemaState",
    "drift_report",
    "expected_migrations",
    "migration_status",
    "pending_by_schema",
    "schema_drift",
]

REFERENCE_PREFIX = "_prumo_reference_"


# ---------------------------------------------------------------- migrations


@dataclass(frozen=True)
class ExpectedMigrations:
    """The migration graph as `app.name` keys.

    `nodes` are the graph's nodes (squashed migrations in place of what they replace);
    `replaces` maps a squashed node to the keys it replaces: a schema that recorded all of
    those has the squashed migration too (Django treats it as applied).
    """

    nodes: tuple[str, ...]
    replaces: dict[str, tuple[str, ...]]

    @property
    def all_keys(self) -> list[str]:
        """Every key the SQL check compares against (nodes plus replaced keys)."""
        keys = set(self.nodes)
        for replaced in self.replaces.values():
            keys.update(replaced)
        return sorted(keys)

    def unsatisfied(self, missing: Iterable[str]) -> list[str]:
        """The graph nodes really missing, given the keys (of `all_keys`) not recorded."""
        missing = set(missing)
        result = []
        for node in self.nodes:
            if node not in missing:
                continue
            replaced = self.replaces.get(node)
            if replaced and not missing.intersection(replaced):
                continue  # every replaced migration is recorded: the squash counts as applied
            result.append(node)
        return result


def expected_migrations() -> ExpectedMigrations:
    """Read the migration graph from disk (no database access)."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    nodes = tuple(sorted(f"{app}.{name}" for app, name in loader.graph.nodes))
    replaces = {
        f"{app}.{name}": tuple(f"{r_app}.{r_name}" for r_app, r_name in migration.replaces)
        for (app, name), migration in loader.replacements.items()
        if (app, name) in loader.graph.nodes
    }
    return ExpectedMigrations(nodes=nodes, replaces=replaces)


@dataclass(frozen=True)
class SchemaState:
    """A schema we expect to exist: `public` or an organization's."""

    name: str
    exists: bool
    has_migrations_table: bool


@dataclass
class MigrationStatus:
    """Every schema checked, and the unapplied migrations (`app.name`) of those behind."""

    schemas: list[SchemaState]
    pending: dict[str, list[str]] = field(default_factory=dict)

    @property
    def missing_schemas(self) -> list[str]:
        """Organizations whose schema does not exist at all."""
        return [state.name for state in self.schemas if not state.exists]


def _quote_ident(name: str) -> str:
    """A quoted identifier for SQL that is executed with parameters (so `%` is doubled)."""
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


def _public_table(model) -> str:
    """The model's table, qualified with `public` so the current search_path is irrelevant."""
    return f"{_quote_ident(get_public_schema_name())}.{_quote_ident(model._meta.db_table)}"


# Queries 2 and 3, over every schema at once. Query 2 lists `public` and every
# organization's schema, whether it exists and whether it has a `django_migrations` table
# (`to_regclass()` answers NULL for a missing schema or table, never an error). Query 3
# reads every listed table in one `UNION ALL` statement, one aggregated row per schema.
#
# Why this shape — medians with 1,001 schemas of 37 migrations each, PostgreSQL 15,
# 2 cores (bench/tenants.py measures the variants):
# - each branch fenced with `OFFSET 0`, rows compared in Python:           ~95 ms
# - the same branches with an anti-join in SQL:                             ~125 ms
# - unfenced branches (PostgreSQL pulls 1,001 branches up into one append
#   relation: 120 ms of planning):                                          ~160-600 ms
# - unfenced per-branch `ARRAY(expected EXCEPT recorded)` (planning):       ~6.8 s
# A dynamic query per schema through `query_to_xml()` has a constant-size text and was a
# little faster (~70 ms), but it needs a server built with libxml, which the embedded
# PostgreSQL (pgserver) is not.
_SCHEMAS_SQL = """
SELECT s.name,
       EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = s.name),
       to_regclass(format('%%I.django_migrations', s.name)) IS NOT NULL
  FROM (SELECT %s::text AS name, 0 AS first {tenants}) s
 ORDER BY s.first, s.name
"""


def _recorded_sql(schemas: list[str]) -> str:
    return "\nUNION ALL\n".join(
        f"(SELECT %s::text, array_agg(app || '.' || name) FROM "
        f"(SELECT app, name FROM {_quote_ident(schema)}.django_migrations OFFSET 0) m)"
        for schema in schemas
    )


def migration_status() -> MigrationStatus:
    """Compare the migration graph with every schema's `django_migrations` (3 queries).

    Query 1 tells whether the organization table exists (on a brand-new database it does
    not, and `public` is then behind on everything); query 2 lists `public` and every
    organization's schema; query 3 reads what each of them has recorded.
    """
    expected = expected_migrations()
    public = get_public_schema_name()
    organizations = _public_table(get_tenant_model())
    recorded: dict[str, set[str]] = {}
    with schema_context(public), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [organizations.replace("%%", "%")])
        tenants, params = "", [public]
        if cursor.fetchone()[0]:
            tenants = f"UNION ALL SELECT schema_name, 1 FROM {organizations} WHERE schema_name <> %s"
            params.append(public)
        cursor.execute(_SCHEMAS_SQL.format(tenants=tenants), params)
        states = [SchemaState(name, exists, has_table) for name, exists, has_table in cursor.fetchall()]
        readable = [state.name for state in states if state.has_migrations_table]
        if readable:
            cursor.execute(_recorded_sql(readable), readable)
            recorded = {name: set(keys or ()) for name, keys in cursor.fetchall()}

    status = MigrationStatus(schemas=states)
    keys = expected.all_keys
    for state in states:
        have = recorded.get(state.name, set())
        unsatisfied = expected.unsatisfied(key for key in keys if key not in have)
        if unsatisfied:
            status.pending[state.name] = unsatisfied
    return status


def pending_by_schema() -> dict[str, list[str]]:
    """Schemas behind the migration graph → their unapplied migrations (`app.name`, sorted).

    Covers `public` and every organization's schema. A schema without a
    `django_migrations` table (or without the schema itself) counts as behind on every
    migration. Up-to-date schemas are left out, so `{}` means nothing to migrate.
    Three queries whatever the number of organizations: see `migration_status`.
    """
    return migration_status().pending


# ---------------------------------------------------------------- structural drift

# One row per column, constraint and index of the target schemas. Text mentioning the
# schema itself (`org_x.table` in index definitions, foreign keys, sequence defaults) is
# stripped so that identical structures in different schemas give identical rows.
_ITEMS_CTE = """
target(nspname) AS (SELECT unnest(%(schemas)s::text[])),
ns AS (
    SELECT n.oid, n.nspname, quote_ident(n.nspname) || '.' AS prefix
      FROM pg_namespace n JOIN target t ON t.nspname = n.nspname
),
items(nspname, kind, tbl, name, def) AS (
    SELECT ns.nspname, 'column', c.relname::text, a.attname::text,
           format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE ' NULL' END
           || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                 WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
           || CASE WHEN a.attgenerated = 's'
                   THEN ' GENERATED ALWAYS AS ('
                        || replace(pg_get_expr(d.adbin, d.adrelid), ns.prefix, '') || ') STORED'
                   ELSE COALESCE(' DEFAULT ' || replace(pg_get_expr(d.adbin, d.adrelid), ns.prefix, ''), '') END
      FROM ns
      JOIN pg_class c ON c.relnamespace = ns.oid AND c.relkind IN ('r', 'p')
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    UNION ALL
    SELECT ns.nspname, 'constraint', c.relname::text, con.conname::text,
           replace(pg_get_constraintdef(con.oid), ns.prefix, '')
      FROM ns
      JOIN pg_constraint con ON con.connamespace = ns.oid
      JOIN pg_class c ON c.oid = con.conrelid
    UNION ALL
    SELECT ns.nspname, 'index', c.relname::text, i.relname::text,
           replace(pg_get_indexdef(i.oid), ns.prefix, '')
      FROM ns
      JOIN pg_class i ON i.relnamespace = ns.oid AND i.relkind IN ('i', 'I')
      JOIN pg_index x ON x.indexrelid = i.oid
      JOIN pg_class c ON c.oid = x.indrelid
)
"""

# One row per target schema whose hash differs from the reference schema's (a schema
# that does not exist has no hash, so it differs too).
_DRIFTED_SQL = f"""
WITH {_ITEMS_CTE},
hashes AS (
    SELECT nspname,
           md5(string_agg(kind || ' ' || tbl || ' ' || name || ' ' || def, E'\\n'
                          ORDER BY kind COLLATE "C", tbl COLLATE "C", name COLLATE "C")) AS hash
      FROM items GROUP BY nspname
)
SELECT t.nspname
  FROM target t LEFT JOIN hashes h ON h.nspname = t.nspname
 WHERE t.nspname <> %(reference)s
   AND h.hash IS DISTINCT FROM (SELECT hash FROM hashes WHERE nspname = %(reference)s)
 ORDER BY t.nspname
"""

_DETAILS_SQL = f"""
WITH {_ITEMS_CTE}
SELECT nspname, kind, tbl, name, def FROM items
UNION ALL
SELECT nspname, 'schema', '', '', '' FROM ns
"""


@dataclass
class DriftReport:
    """Tenant schemas checked, and a description of the differences of those drifted."""

    checked: int
    drifted: dict[str, list[str]] = field(default_factory=dict)


Structure = dict[tuple[str, str, str], str]


def _describe(expected: Structure, actual: Structure) -> list[str]:
    """Human-readable differences between the reference structure and a schema's."""
    expected_tables = {tbl for kind, tbl, _ in expected if kind == "column"}
    actual_tables = {tbl for kind, tbl, _ in actual if kind == "column"}
    lines = [f"missing table {tbl}" for tbl in sorted(expected_tables - actual_tables)]
    lines += [f"extra table {tbl}" for tbl in sorted(actual_tables - expected_tables)]
    whole_tables = expected_tables ^ actual_tables
    for key in sorted(expected.keys() | actual.keys()):
        kind, tbl, name = key
        if tbl in whole_tables:
            continue
        where = f"{tbl}.{name}" if kind == "column" else f"{name} on {tbl}"
        if key not in actual:
            lines.append(f"missing {kind} {where}: {expected[key]}")
        elif key not in expected:
            lines.append(f"extra {kind} {where}: {actual[key]}")
        elif expected[key] != actual[key]:
            lines.append(f"{kind} {where} differs: expected {expected[key]!r}, found {actual[key]!r}")
    return lines


def _details(cursor, reference: str, drifted: list[str]) -> dict[str, list[str]]:
    cursor.execute(_DETAILS_SQL, {"schemas": [reference, *drifted], "reference": reference})
    structures: dict[str, Structure] = {}
    for nspname, kind, tbl, name, definition in cursor.fetchall():
        structure = structures.setdefault(nspname, {})
        if kind != "schema":
            structure[(kind, tbl, name)] = definition
    result = {}
    for schema in drifted:
        if schema not in structures:
            result[schema] = ["schema does not exist"]
        else:
            result[schema] = _describe(structures[reference], structures[schema]) or [
                "differs from the reference (no itemized difference found)"
            ]
    return result


def drift_report(schemas: list[str] | None = None) -> DriftReport:
    """Compare the structure of tenant schemas with a freshly provisioned reference.

    The reference schema is provisioned with `schema_provision` inside a transaction (a
    savepoint when one is already open) that is always rolled back: PostgreSQL DDL is
    transactional, so nothing is left behind. One catalog query hashes every schema's
    columns, constraints and indexes and returns the schemas whose hash differs from the
    reference's; a second query, over those schemas only, itemizes the differences.
    `schemas` defaults to every organization's schema.
    """
    from .provisioning import schema_provision

    public = get_public_schema_name()
    reference = f"{REFERENCE_PREFIX}{secrets.token_hex(6)}"
    with transaction.atomic():
        try:
            if schemas is None:
                schemas = list(
                    get_tenant_model().objects.exclude(schema_name=public)
                    .order_by("schema_name").values_list("schema_name", flat=True)
                )
            schema_provision(reference)
            with schema_context(public), connection.cursor() as cursor:
                cursor.execute(_DRIFTED_SQL, {"schemas": [reference, *schemas], "reference": reference})
                drifted = [row[0] for row in cursor.fetchall()]
                details = _details(cursor, reference, drifted) if drifted else {}
        finally:
            transaction.set_rollback(True)
    return DriftReport(checked=len(schemas), drifted=details)


def schema_drift() -> dict[str, list[str]]:
    """Tenant schemas whose columns, constraints or indexes differ from a fresh schema's.

    Returns `{schema: [difference, ...]}` for the drifted schemas only (`{}`: no drift).
    See `drift_report`.
    """
    return drift_report().drifted
