"""Fixtures of the models area: registries under test and a tiny trained model."""

from __future__ import annotations

import pytest
from model_helpers import tiny_config

from prognos.core.registry import FilesystemRegistry

REGISTRY_IMPLEMENTATIONS = {"filesystem": lambda root: FilesystemRegistry(root)}


@pytest.fixture(params=sorted(REGISTRY_IMPLEMENTATIONS))
def make_registry(request, tmp_path):
    """A factory of registry objects over one store (call twice = a restart)."""
    factory = REGISTRY_IMPLEMENTATIONS[request.param]
    return lambda: factory(tmp_path / "registry")


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory):
    """A tiny FD001 model trained once through a filesystem registry."""
    from models.train import train_subset

    registry = FilesystemRegistry(tmp_path_factory.mktemp("tiny-registry"))
    result = train_subset(
        "FD001", seed=7, registry=registry, machines=12, config=tiny_config(), progress=print
    )
    return registry, result
