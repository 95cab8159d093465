"""One local 2-CPU Ray cluster for every Ray test of this package (Ray takes seconds to start)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()
