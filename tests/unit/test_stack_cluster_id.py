import pytest

from prognos.core.stack import _cluster_id

pytestmark = pytest.mark.unit


def test_cluster_ids_never_look_like_an_option():
    ids = {_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert not any(cluster_id.startswith("-") for cluster_id in ids)
    assert all(len(cluster_id) == 22 for cluster_id in ids)
