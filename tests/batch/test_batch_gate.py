"""The silver gate on a lake of its own: above the failure share, silver fails after
writing the quarantine, and a rerun writes nothing twice. Apart from the batch layer's
end-to-end module, so that `--dist loadfile` can run it on the other worker."""

from __future__ import annotations

import json

import pytest

from prognos.core import lake, stack
from tests.batch.test_batch_e2e import good_event, lake_settings, produce, table

pytestmark = pytest.mark.slow


def test_gate_fails_above_the_threshold_after_writing_quarantine(
    broker_settings, tmp_path_factory, spark
):
    from spark_jobs import bronze_ingest, silver

    settings = lake_settings(broker_settings, tmp_path_factory.mktemp("gate-lake"))
    stack.ensure_topics(settings)
    good = [json.dumps(good_event("FD001-train-0001", cycle)).encode() for cycle in (1, 2, 3)]
    bad = [b"{", b"[]", json.dumps(good_event("FD001-train-0001", 0)).encode()]
    produce(settings, [(b"FD001-train-0001", value) for value in good + bad])
    bronze_ingest.ingest(spark, settings)
    with pytest.raises(silver.GateFailedError, match="3 of 6 rows"):
        silver.run(spark, settings, "gated")
    quarantine = table(settings, "quarantine")
    assert sorted(bytes(v) for v in quarantine["value"]) == sorted(bad)
    assert not lake.is_delta_table(settings.lake / "silver") or table(settings, "silver").empty
    # a rerun fails the same way and writes nothing twice
    with pytest.raises(silver.GateFailedError):
        silver.run(spark, settings, "gated")
    assert len(table(settings, "quarantine")) == len(bad)
