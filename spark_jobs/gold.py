"""Gold features: silver -> gold_features with the shared feature code, per machine.

prognos.core.features (also used by the speed layer) runs per machine with applyInPandas;
a feature row for cycle c uses only cycles <= c. Condition models are learned from the
C-MAPSS training data of each machine's subset (machine ids start with it). The table is
recomputed from the full silver history and overwritten: a rerun gives the same rows.
"""

from __future__ import annotations

import json

from prognos.core import lake
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import get_table, is_delta_table, table_path

DEFAULT_SUBSET = "FD001"


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


def features_per_machine(models_json: dict):
    """An applyInPandas function: one machine's silver history -> its gold rows."""
    columns = get_table("gold_features").column_names

    def compute(history):
        from prognos.core.features import ConditionModel, compute_features

        machine = history["machine_id"].iloc[0]
        model = ConditionModel.from_json(models_json[subset_of(machine)])
        features = compute_features(history, model)
        times = history.set_index("cycle")["event_time"]
        features["event_time"] = features["cycle"].map(times).to_numpy()
        features["cycle"] = features["cycle"].astype("int32")
        features["condition"] = features["condition"].astype("int32")
        return features[columns]

    return compute


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
    gold = (
        silver.select("machine_id", "cycle", "event_time", *_feature_inputs())
        .groupBy("machine_id")
        .applyInPandas(features_per_machine(models), spec.spark_schema)
        .withColumn("cycle", F.col("cycle").cast("int"))
    )
    metadata = json.dumps({"run_id": run_id, "silver_version": silver_version})
    version = lake.write_table(gold, spec, settings, mode="overwrite", user_metadata=metadata)
    rows = lake.read_table(spark, spec, settings, version=version).count()
    return {"silver_version": silver_version, "gold_version": version, "rows": rows}


def _feature_inputs() -> list[str]:
    from prognos.core.features import SETTING_NAMES, FeatureConfig

    return [*SETTING_NAMES, *FeatureConfig().sensors]


def main(argv=None) -> None:
    from spark_jobs import common

    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    spark = common.session("gold", settings)
    run_id = common.run_id_of(args)
    common.report({"run_id": run_id, **build(spark, settings, run_id)})


if __name__ == "__main__":
    main()
