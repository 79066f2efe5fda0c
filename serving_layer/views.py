"""Reading the pipeline's Delta tables without a JVM (delta-rs), version first.

`DeltaViews.version(name)` is the cheap check the refresher runs (it reads the Delta log
only); `read(name, version)` loads a table at a version into Arrow.
"""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from prognos.core.settings import Settings
from prognos.core.tables import get_table, table_path


class DeltaViews:
    """Versions and Arrow reads of catalog tables through delta-rs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _open(self, name: str, version: int | None = None) -> DeltaTable | None:
        path = table_path(name, self.settings)
        try:
            return DeltaTable(str(path), version=version)
        except TableNotFoundError:
            return None

    def version(self, name: str) -> int | None:
        """The table's current Delta version; None while the table does not exist."""
        table = self._open(name)
        return None if table is None else table.version()

    def read(
        self, name: str, version: int | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """The table at `version` (latest when None); an empty table when it does not exist."""
        table = self._open(name, version)
        if table is None:
            return get_table(name).arrow_schema.empty_table()
        return table.to_pyarrow_table(columns=columns)
