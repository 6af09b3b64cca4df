"""Test-wide settings: offline, one thread per process, and one private Ray instance.

Tests own their Ray instance (`ray.init(address="local")`): `ray stop` would end every Ray
process on the host, including other users'.
"""
from __future__ import annotations

import os

for k, v in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(k, v)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance shared by the session's Ray tests (start-up costs ~10 s)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


# Modules whose tests start DeepSpeed engines (they need its C++ ops: `make test` builds them in
# the background, ~5 min of one core on a fresh clone) run after every other module: no test waits
# on torch's build lock (test_gpu_check waited ~80 s), and the multi-node cluster starts once the
# build is done (CI saw a node miss `ray start`'s 30-s registration while it ran). The suite's total
# time did not change measurably (the build then takes CPU from the multi-process tests instead).
NEEDS_DS_OPS = ("test_gpu_check.py", "test_student_ray.py", "test_sweep.py", "test_multinode.py")


def pytest_collection_modifyitems(session, config, items):
    late = {name: i for i, name in enumerate(NEEDS_DS_OPS)}
    # stable: the other modules keep their order, the late ones follow in NEEDS_DS_OPS's order
    items.sort(key=lambda it: late.get(it.path.name, -1))
