"""Reading the pipeline's Delta tables without a JVM (delta-rs), version first.

`DeltaViews.version(name)` is the cheap check the refresher runs; `read(name, version)`
loads a table at a version into Arrow. The newest versions come from the core's
`TableFollower` (kept handles: at a 0.2 s poll over four tables, opening them afresh kept
a core busy). An instance is meant for one thread (the snapshot refresher), over tables
that live as long as it does (see `TableFollower` on removed or re-created tables).
"""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from prognos.core.lake import TableFollower
from prognos.core.settings import Settings
from prognos.core.tables import get_table, table_path


class DeltaViews:
    """Versions and Arrow reads of catalog tables through delta-rs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tables = TableFollower(settings)

    def _open(self, name: str, version: int) -> DeltaTable | None:
        path = table_path(name, self.settings)
        try:
            return DeltaTable(str(path), version=version)
        except TableNotFoundError:
            return None

    def version(self, name: str) -> int | None:
        """The table's current Delta version; None while the table does not exist."""
        table = self._tables.latest(name)
        return None if table is None else table.version()

    def read(
        self, name: str, version: int | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """The table at `version` (latest when None); an empty table when it does not exist."""
        table = self._tables.kept(name)
        if table is None or table.version() != version:
            table = self._tables.latest(name) if version is None else self._open(name, version)
        if table is None:
            return get_table(name).arrow_schema.empty_table()
        return table.to_pyarrow_table(columns=columns)
