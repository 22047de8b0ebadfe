"""Statements prepared once per database connection (SQL `PREPARE` / `EXECUTE`), for hot paths whose SQL takes
longer to parse and plan than to run (a check answered from the cache: checks.services).

Django's psycopg cursors bind parameters on the client and never prepare. A `PreparedStatement` takes SQL written
with named placeholders (`%(name)s`, as for `cursor.execute(sql, params)`), prepares it on a connection the first
time that connection runs it, then sends `EXECUTE name(<the parameters>)`: Django's query log and
CaptureQueriesContext show that `EXECUTE` like any other statement.

PostgreSQL keeps a prepared statement for the whole session, whatever becomes of the transaction that prepared
it, and parses it again by itself when the search_path (django-tenants' organization) changed since it last ran.
A pooler in transaction mode would hand the statement's session to another client: Prumo's PgBouncer runs in
session mode (docs, PITFALLS).

In `core` (no app imports): any app's hot path may use it.
"""

from __future__ import annotations

import hashlib
import re
import weakref

from django.db import DatabaseError

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
UNKNOWN_STATEMENT = "26000"  # invalid_sql_statement_name: no prepared statement of that name in the session

# The statements prepared on each open psycopg connection (by name); a closed connection's entry goes with it.
_prepared_on: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


class PreparedStatement:
    """`sql` with named placeholders, prepared as `<name>_<hash of sql>` on each connection that runs it."""

    def __init__(self, name: str, sql: str):
        self.params: list[str] = []  # placeholder names in $1, $2, ... order

        def positional(match: re.Match) -> str:
            if match[1] not in self.params:
                self.params.append(match[1])
            return f"${self.params.index(match[1]) + 1}"

        self.name = f"{name}_{hashlib.sha1(sql.encode()).hexdigest()[:10]}"
        self.prepare_sql = f"PREPARE {self.name} AS {PLACEHOLDER.sub(positional, sql)}"
        self.execute_sql = f"EXECUTE {self.name}({', '.join(['%s'] * len(self.params))})" if self.params \
            else f"EXECUTE {self.name}"

    def execute(self, cursor, params: dict) -> None:
        """Run the statement on `cursor` (a Django cursor), preparing it first on a connection new to it.

        A session that lost its prepared statements (`DISCARD ALL`, `DEALLOCATE ALL`) prepares it again: at once
        outside a transaction; inside one, whose statement just failed, on the connection's next call."""
        prepared = _prepared_on.setdefault(cursor.cursor.connection, set())  # psycopg's, under Django's wrapper
        args = [params[name] for name in self.params]
        for first_try in (True, False):
            if self.name not in prepared:
                cursor.execute(self.prepare_sql)
                prepared.add(self.name)
            try:
                cursor.execute(self.execute_sql, args)
                return
            except DatabaseError as error:
                if getattr(error.__cause__, "sqlstate", None) != UNKNOWN_STATEMENT:
                    raise
                prepared.discard(self.name)
                if not first_try or cursor.db.in_atomic_block:
                    raise
