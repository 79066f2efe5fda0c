"""History read bench: one machine's time range from a Delta table through delta-rs,
with and without the history view's layout.

Two tables of the same readings (machines x cycles, silver's series columns):
- "as appended": the order silver is written in, each batch run's MERGE inserting a
  time slice of every machine (no file holds one machine only);
- "history view": the layout spark_jobs/views.py gives machine_history, rows sorted by
  machine and event time, cut into files of HISTORY_ROWS_PER_FILE rows with row groups of
  HISTORY_ROW_GROUP_ROWS (written here with delta-rs, the same cut Spark makes).
Each query reads one machine's range of `--span` cycles with the serving layer's reader
(serving_layer.views.read_rows: file pruning on the Delta statistics, then row groups).
The reference of every figure is the same query on the appended table.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable, WriterProperties, write_deltalake

from bench._harness import BenchResult, median, parse_args, percentile
from prognos.core.tables import get_table
from serving_layer.views import history_predicate, read_rows
from spark_jobs.views import HISTORY_ROW_GROUP_ROWS, HISTORY_ROWS_PER_FILE

T0 = datetime(2026, 1, 1, tzinfo=UTC)
APPEND_RUNS = 20  # batch runs that built the appended table


def configure(parser) -> None:
    parser.add_argument("--machines", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=1000, help="readings per machine")
    parser.add_argument("--span", type=int, default=200, help="cycles per query")
    parser.add_argument("--queries", type=int, default=60)


def readings(machines: int, cycles: int) -> pa.Table:
    """machines x cycles readings, sorted by cycle then machine (the arrival order)."""
    schema = get_table("machine_history").arrow_schema
    rng = np.random.default_rng(7)
    rows = machines * cycles
    cycle = np.repeat(np.arange(1, cycles + 1, dtype=np.int32), machines)
    ids = np.tile(np.array([f"m{i:06d}" for i in range(machines)], dtype=object), cycles)
    columns = {
        "machine_id": pa.array(ids, pa.string()),
        "cycle": pa.array(cycle),
        "event_time": pa.array(
            [T0 + timedelta(minutes=int(c)) for c in range(1, cycles + 1)], schema.field(2).type
        ).take(pa.array(cycle - 1)),
    }
    for name in schema.names[3:]:
        columns[name] = pa.array(rng.normal(500.0, 5.0, rows))
    return pa.table(columns).cast(schema)


def write_appended(path: Path, table: pa.Table) -> None:
    for chunk in _chunks(table, -(-table.num_rows // APPEND_RUNS)):
        write_deltalake(str(path), chunk, mode="append")


def write_history_view(path: Path, table: pa.Table) -> None:
    ordered = table.sort_by([("machine_id", "ascending"), ("event_time", "ascending")])
    properties = WriterProperties(max_row_group_size=HISTORY_ROW_GROUP_ROWS)
    for chunk in _chunks(ordered, HISTORY_ROWS_PER_FILE):
        write_deltalake(str(path), chunk, mode="append", writer_properties=properties)


def _chunks(table: pa.Table, rows: int):
    for start in range(0, table.num_rows, rows):
        yield table.slice(start, rows)


def query_times(path: Path, args, machines: int) -> tuple[list[float], int]:
    """Milliseconds per query (a fresh handle is opened once, as the server keeps one)."""
    handle = DeltaTable(str(path))
    rng = np.random.default_rng(11)
    spent, rows = [], 0
    for _ in range(args.queries):
        machine = f"m{int(rng.integers(machines)):06d}"
        first = int(rng.integers(1, max(2, args.cycles - args.span)))
        start, end = T0 + timedelta(minutes=first), T0 + timedelta(minutes=first + args.span - 1)
        started = time.perf_counter()
        found = read_rows(handle, history_predicate(machine, start, end))
        spent.append((time.perf_counter() - started) * 1000)
        rows += found.num_rows
    return spent, rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], configure)
    if args.quick:
        args.machines, args.cycles, args.queries = 200, 500, 20
    result = BenchResult("history_read", args.quick)
    root = Path(tempfile.mkdtemp(prefix="prognos-history-"))
    try:
        table = readings(args.machines, args.cycles)
        appended, view = root / "appended", root / "history_view"
        write_appended(appended, table)
        write_history_view(view, table)
        del table
        with_layout, rows = query_times(view, args, args.machines)
        without, reference_rows = query_times(appended, args, args.machines)
        if rows != reference_rows:
            raise SystemExit(f"the layouts answered differently: {rows} vs {reference_rows} rows")
        result.figures.update(
            {
                "rows": args.machines * args.cycles,
                "machines": args.machines,
                "span_cycles": args.span,
                "files": len(DeltaTable(str(view)).file_uris()),
                "query_p50_ms": round(median(with_layout), 2),
                "query_p99_ms": round(percentile(with_layout, 99), 2),
            }
        )
        result.reference.update(
            {
                "files": len(DeltaTable(str(appended)).file_uris()),
                "query_p50_ms": round(median(without), 2),
                "query_p99_ms": round(percentile(without, 99), 2),
            }
        )
        result.notes.append(
            f"history view: files of {HISTORY_ROWS_PER_FILE} rows, row groups of "
            f"{HISTORY_ROW_GROUP_ROWS}; reference: {APPEND_RUNS} time-sliced appends"
        )
        result.check("history query p99 <= 50 ms", result.figures["query_p99_ms"], "<=", 50.0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.finish()


if __name__ == "__main__":
    main()
