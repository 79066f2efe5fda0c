"""Reading the pipeline's Delta tables without a JVM (delta-rs), version first.

`DeltaViews.version(name)` is the cheap check the refresher runs; `read(name, version)`
loads a (small) view at a version into Arrow. Tables that grow with history (the history
view, alerts) are never loaded whole: `PinnedTables` keeps handles at pinned versions for
the request threads, and `read_rows` reads the rows of a `RowFilter` through file pruning
on the Delta statistics, then on the Parquet row groups. The newest versions come from the core's
`TableFollower` (kept handles: at a 0.2 s poll over four tables, opening them afresh kept
a core busy). An instance is meant for one thread (the snapshot refresher), over tables
that live as long as it does (see `TableFollower` on removed or re-created tables).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
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
        self._pinned = PinnedTables(settings)

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

    def rows(
        self, name: str, version: int | None, where: RowFilter, columns: list[str] | None = None
    ) -> pa.Table:
        """The rows of the table at `version` matching `where` (pruned reads); empty when
        the table or version does not exist. Safe from request threads."""
        table = None if version is None else self._pinned.at(name, version)
        if table is None:
            schema = get_table(name).arrow_schema
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        return read_rows(table, where, columns)

    def span(self, name: str, version: int | None, column: str) -> tuple | None:
        """(min, max) of a column at `version` from the Delta file statistics (the log
        only); None for an empty or missing table."""
        table = None if version is None else self._pinned.at(name, version)
        if table is None:
            return None
        actions = pa.table(table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return None
        low, high = actions.column(f"min.{column}"), actions.column(f"max.{column}")
        if low.null_count or high.null_count:  # a file without statistics: read the column
            values = table.to_pyarrow_dataset().to_table(columns=[column]).column(column)
            low = high = values
        low, high = pc.min(low).as_py(), pc.max(high).as_py()
        return None if low is None else (low, high + STATS_PRECISION)

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


@dataclass(frozen=True)
class RowFilter:
    """One row condition in both of its forms: SQL over the Delta file statistics (which
    files can hold a match) and an Arrow expression (which rows do)."""

    sql: str
    expression: ds.Expression


def _timestamp_sql(value: datetime) -> str:
    return f"'{value.isoformat()}'"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Spark's Delta writer keeps timestamp statistics in milliseconds (truncated): a file's
# true max can lie up to 1 ms above its recorded max, so lower bounds on the statistics
# are widened by that much (the row filter stays exact).
STATS_PRECISION = timedelta(milliseconds=1)


def time_filter(
    column: str, start: datetime | None, end: datetime | None, end_inclusive: bool = True
) -> RowFilter | None:
    """start <= column <= end (< end unless end_inclusive; either bound optional); None
    without bounds."""
    terms = []
    start = None if start is None else _utc(start)
    end = None if end is None else _utc(end)
    if start is not None:
        widened = _timestamp_sql(start - STATS_PRECISION)
        terms.append((f"{column} >= {widened}", ds.field(column) >= start))
    if end is not None and end_inclusive:
        terms.append((f"{column} <= {_timestamp_sql(end)}", ds.field(column) <= end))
    elif end is not None:
        terms.append((f"{column} < {_timestamp_sql(end)}", ds.field(column) < end))
    if not terms:
        return None
    expression = terms[0][1]
    for _, term in terms[1:]:
        expression = expression & term
    return RowFilter(" AND ".join(sql for sql, _ in terms), expression)


def both(left: RowFilter, right: RowFilter | None) -> RowFilter:
    if right is None:
        return left
    return RowFilter(f"{left.sql} AND {right.sql}", left.expression & right.expression)


def history_predicate(machine_id: str, start: datetime | None, end: datetime | None) -> RowFilter:
    """One machine's readings between start and end (inclusive)."""
    quoted = machine_id.replace("'", "''")
    machine = RowFilter(f"machine_id = '{quoted}'", ds.field("machine_id") == machine_id)
    return both(machine, time_filter("event_time", start, end))


def read_rows(table: DeltaTable, where: RowFilter, columns: list[str] | None = None) -> pa.Table:
    """The rows of a table matching `where`: only the files whose statistics allow a match
    are opened, and in them only the row groups whose statistics do."""
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=where.sql)
    return dataset.to_table(columns=columns, filter=where.expression)


class PinnedTables:
    """delta-rs handles at pinned versions, shared by request threads (opened once per
    version: opening replays the log); the newest few versions per table are kept."""

    def __init__(self, settings: Settings, keep: int = 2) -> None:
        self.settings = settings
        self.keep = keep
        self._handles: OrderedDict[tuple[str, int], DeltaTable] = OrderedDict()
        self._lock = threading.Lock()

    def at(self, name: str, version: int) -> DeltaTable | None:
        """The table at `version`; None when it does not exist."""
        key = (name, version)
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = _open_at(table_path(name, self.settings), version)
                if handle is None:
                    return None
                self._handles[key] = handle
                self._forget_old(name)
            return handle

    def _forget_old(self, name: str) -> None:
        mine = [key for key in self._handles if key[0] == name]
        for key in mine[: max(0, len(mine) - self.keep)]:
            del self._handles[key]


def _open_at(path, version: int) -> DeltaTable | None:
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError:
        return None
