"""Gold features: silver -> gold_features with the shared feature code.

prognos.core.features (also used by the speed layer) runs with mapInPandas over silver
partitioned by machine and sorted by machine and cycle: each Arrow batch's complete machines
are computed together (vectorised, the same values as machine by machine), a machine cut by
the batch end waits for the next batch; a feature row for cycle c uses only cycles <= c. Condition
models are learned from the C-MAPSS training data of each machine's subset (machine ids
start with it). Labels where the true RUL is known (C-MAPSS train and test engines, by
id): rul, rul_target capped at PROGNOS_GOLD_RUL_CAP, fails_within_h (rul <=
PROGNOS_GOLD_HORIZON_CYCLES); null elsewhere.
The table is recomputed from the full silver history and overwritten: a rerun gives the
same rows.
"""

from __future__ import annotations

import json
import re

from prognos.core import lake, logs
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import GOLD_LABEL_COLUMNS, get_table, is_delta_table, table_path

DEFAULT_SUBSET = "FD001"
# Parquet dictionaries pay off for repeated values, not for ~150 columns of distinct
# doubles: building them and falling back to plain pages takes half of gold's write time.
GOLD_WRITE_OPTIONS = {"parquet.enable.dictionary": "false"}
CMAPSS_ID = re.compile(r"(?P<subset>FD00[1-4])-(?P<split>train|test)-(?P<unit>\d{4})")


def subset_of(machine_id: str) -> str:
    """The C-MAPSS subset a machine belongs to (its id prefix), else the default."""
    from prognos.core.data import SUBSETS

    prefix = str(machine_id).split("-", 1)[0]
    return prefix if prefix in SUBSETS else DEFAULT_SUBSET


def condition_models(subsets) -> dict:
    """One condition model per subset, fitted on its training data (with RUL)."""
    from prognos.core.data import load_cmapss
    from prognos.core.features import fit_condition_model

    return {subset: fit_condition_model(load_cmapss(subset, "train")) for subset in subsets}


def features_per_bucket(models_json: dict):
    """The feature rows of a frame of complete machine histories (any order): a pandas
    function, vectorised over the frame's machines, per C-MAPSS subset."""
    labels = {name for name, _ in GOLD_LABEL_COLUMNS}
    columns = [c for c in get_table("gold_features").column_names if c not in labels]

    def compute(histories):
        import numpy as np
        import pandas as pd

        from prognos.core.features import ConditionModel, compute_features_many

        parts = []
        codes, machines = pd.factorize(histories["machine_id"])
        subsets = np.asarray([subset_of(machine) for machine in machines], dtype=object)[codes]
        for subset in sorted(set(subsets)):
            model = ConditionModel.from_json(models_json[subset])
            rows = histories[subsets == subset].sort_values(["machine_id", "cycle"], kind="stable")
            features = compute_features_many(rows, model)
            features.insert(
                columns.index("event_time"), "event_time", rows["event_time"].to_numpy()
            )
            parts.append(features)
        features = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        features["cycle"] = features["cycle"].astype("int32")
        features["condition"] = features["condition"].astype("int32")
        return features[columns] if list(features.columns) != columns else features

    return compute


def features_of_sorted_batches(models_json: dict):
    """A mapInPandas function over a partition sorted by machine and cycle: the feature
    rows of each batch's complete machines; the last machine of a batch may continue in
    the next one, so its rows wait for it (or for the partition's end)."""
    compute = features_per_bucket(models_json)

    def features(batches):
        import pandas as pd

        waiting = None
        for batch in batches:
            if not len(batch):
                continue
            if waiting is not None:
                batch = pd.concat([waiting, batch], ignore_index=True)
            machines = batch["machine_id"].to_numpy()
            others = (machines != machines[-1]).nonzero()[0]
            last_start = int(others[-1]) + 1 if len(others) else 0
            waiting = batch.iloc[last_start:]
            if last_start:
                yield compute(batch.iloc[:last_start])
        if waiting is not None and len(waiting):
            yield compute(waiting)

    return features


def failure_cycles(machines, settings: Settings) -> dict[str, int]:
    """machine id -> cycle of failure, where the C-MAPSS files tell it: a train engine fails
    right after its last cycle (run to failure), a test engine RUL_FD00x cycles after its
    last one. Scaled copies (-cNN) and unknown ids have no known failure."""
    from prognos.core.data import load_cmapss
    from prognos.core.errors import DataFileError

    wanted: dict[tuple[str, str], set[int]] = {}
    for machine in machines:
        match = CMAPSS_ID.fullmatch(str(machine))
        if match:
            wanted.setdefault((match["subset"], match["split"]), set()).add(int(match["unit"]))
    failures = {}
    for (subset, split), units in sorted(wanted.items()):
        try:
            frame = load_cmapss(subset, split, settings)
        except DataFileError:  # e.g. no RUL file for the test split: labels stay null
            continue
        frame = frame[frame["machine_id"].isin(units)]
        at_failure = (frame["cycle"] + frame["rul"]).groupby(frame["machine_id"]).first()
        for unit, cycle in at_failure.items():
            failures[f"{subset}-{split}-{int(unit):04d}"] = int(cycle)
    return failures


def with_labels(spark, gold, failures: dict[str, int], settings: Settings):
    """rul, rul_target (capped) and fails_within_h where the failure cycle is known."""
    from pyspark.sql import functions as F

    known = spark.createDataFrame(list(failures.items()), "machine_id string, failure_cycle long")
    rul = (F.col("failure_cycle") - F.col("cycle")).cast("double")
    return (
        gold.join(F.broadcast(known), "machine_id", "left")
        .withColumn("rul", rul)
        .withColumn(  # least() skips nulls: an unknown RUL must stay null
            "rul_target", F.when(rul.isNotNull(), F.least(rul, F.lit(float(settings.gold_rul_cap))))
        )
        .withColumn(
            "fails_within_h",
            F.when(rul.isNull(), None).otherwise(
                (rul <= settings.gold_horizon_cycles).cast("double")
            ),
        )
        .drop("failure_cycle")
    )


def build(spark, settings: Settings, run_id: str) -> dict:
    """Recompute gold from silver; return the versions read and written."""
    from pyspark.sql import functions as F

    if not is_delta_table(table_path("silver", settings)):
        return {"silver_version": None, "gold_version": None, "rows": 0}
    silver_version = lake.latest_version(spark, "silver", settings)
    silver = lake.read_table(spark, "silver", settings, version=silver_version)
    machines = [row["machine_id"] for row in silver.select("machine_id").distinct().collect()]
    subsets = sorted({subset_of(machine) for machine in machines}) or [DEFAULT_SUBSET]
    models = {name: model.to_json() for name, model in condition_models(subsets).items()}
    spec = get_table("gold_features")
    features = (
        silver.select("machine_id", "cycle", "event_time", *_feature_inputs())
        .repartition(max(1, settings.spark_shuffle_partitions), "machine_id")
        .sortWithinPartitions("machine_id", "cycle")
        .mapInPandas(features_of_sorted_batches(models), _without_labels(spec))
        .withColumn("cycle", F.col("cycle").cast("int"))
    )
    gold = with_labels(spark, features, failure_cycles(machines, settings), settings)
    gold = gold.select(*spec.column_names)
    metadata = json.dumps({"run_id": run_id, "silver_version": silver_version})
    version = lake.write_table(
        gold, spec, settings, mode="overwrite", user_metadata=metadata, options=GOLD_WRITE_OPTIONS
    )
    rows = _rows_written(spark, settings)
    logs.lineage("gold", run_id, {"silver": silver_version}, {"gold_features": version}, settings)
    return {"silver_version": silver_version, "gold_version": version, "rows": rows}


def _rows_written(spark, settings: Settings) -> int:
    """Rows of the last gold commit (an overwrite: the whole table), from its metrics."""
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, str(table_path("gold_features", settings))).history(1)
    return int(last.collect()[0]["operationMetrics"]["numOutputRows"])


def _without_labels(spec):
    from pyspark.sql.types import StructType

    labels = {name for name, _ in GOLD_LABEL_COLUMNS}
    return StructType([f for f in spec.spark_schema.fields if f.name not in labels])


def _feature_inputs() -> list[str]:
    from prognos.core.features import SETTING_NAMES, FeatureConfig

    return [*SETTING_NAMES, *FeatureConfig().sensors]


def main(argv=None) -> None:
    from spark_jobs import common

    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    with common.lake_job("gold", args, settings):
        spark = common.session("gold", settings)
        run_id = common.run_id_of(args)
        common.report({"run_id": run_id, **build(spark, settings, run_id)})


if __name__ == "__main__":
    main()
