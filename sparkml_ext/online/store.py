"""Where published entity histories live for serving: a small interface, and SQLite behind it.

An online store maps (entity, value) to one history (Arrow IPC bytes, see
`online.publish`) and keeps the publish's facts (spec, feature and bronze versions) beside
them. Both change together: `publish` replaces rows and facts in one transaction, and
`read` sees one publish whole, so a server never scores with a half-written publish or
names a version its histories do not come from.

SQLite is the embedded default: no server to run, a key read in tens of microseconds from
the page cache, and in WAL mode readers go on reading the last publish while a new one is
written. Its limit is one machine: the store file must be on a local disk of the host that
serves. Redis, DynamoDB or Cassandra would implement the same three methods (`read` as one
MGET/BatchGetItem under a versioned key prefix, `publish` writing the new prefix and then
flipping one pointer to it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

Rows = Iterable[tuple[str, str, bytes | None]]  # (entity, value, history; None: it has none now)


class OnlineStore(Protocol):
    def read(self, keys: Mapping[str, Sequence[str]]) -> tuple[dict, dict[tuple[str, str], bytes]]:
        """The facts of the last publish and the histories of the (entity, value) pairs it
        holds, from that one publish."""

    def facts(self) -> dict:
        """The facts of the last publish ({} before the first)."""

    def publish(self, facts: dict, rows: Rows, *, replace: bool) -> int:
        """Write `rows` (a None history removes the value's) and `facts` at once (`replace`:
        drop every other history first); the histories written."""


class SQLiteStore:
    """An OnlineStore in one SQLite file; one connection per thread."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"no online store at {self.path}: run `sparkml-ext publish-online` first")
            connection = self._open()
            self._local.connection = connection
        return connection

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")  # a publish that returned survives a crash
        connection.execute("CREATE TABLE IF NOT EXISTS history (entity TEXT NOT NULL, value TEXT NOT NULL, "
                           "events BLOB NOT NULL, PRIMARY KEY (entity, value)) WITHOUT ROWID")
        connection.execute("CREATE TABLE IF NOT EXISTS facts (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return connection

    def read(self, keys: Mapping[str, Sequence[str]]) -> tuple[dict, dict[tuple[str, str], bytes]]:
        connection = self._connection()
        found: dict[tuple[str, str], bytes] = {}
        connection.execute("BEGIN")  # one snapshot: the facts and the rows of one publish
        try:
            facts = self._facts(connection)
            for entity, values in keys.items():
                unique = list(dict.fromkeys(values))
                for start in range(0, len(unique), 500):  # SQLite's bound on host parameters
                    chunk = unique[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    found |= {(entity, value): events for value, events in connection.execute(
                        f"SELECT value, events FROM history WHERE entity = ? AND value IN ({marks})",
                        [entity, *chunk])}
        finally:
            connection.execute("COMMIT")
        return facts, found

    def facts(self) -> dict:
        if not os.path.exists(self.path):
            return {}
        return self._facts(self._connection())

    @staticmethod
    def _facts(connection: sqlite3.Connection) -> dict:
        return {name: json.loads(value) for name, value in connection.execute("SELECT name, value FROM facts")}

    def publish(self, facts: dict, rows: Rows, *, replace: bool) -> int:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        connection = self._open()  # a connection of its own: the transaction is this call's
        written = 0
        try:
            connection.execute("BEGIN IMMEDIATE")
            if replace:
                connection.execute("DELETE FROM history")
                connection.execute("DELETE FROM facts")
            for entity, value, events in rows:
                if events is None:
                    connection.execute("DELETE FROM history WHERE entity = ? AND value = ?", (entity, value))
                else:
                    connection.execute("INSERT OR REPLACE INTO history VALUES (?, ?, ?)", (entity, value, events))
                    written += 1
            connection.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?)",
                                   [(name, json.dumps(value)) for name, value in facts.items()])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()
        return written
