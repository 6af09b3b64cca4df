"""Test-wide settings: offline, one thread per process, and one private Ray instance.

Tests own their Ray instance (`ray.init(address="local")`): `ray stop` would end every Ray
process on the host, including other users'.
"""
from __future__ import annotations

import os

for k, v in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
             # Ray Train's preemption watcher (an actor per run that polls for a cloud's preemption
             # notices) has nothing to watch here and costs each of the suite's ~12 runs a process start
             "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
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
# on torch's build lock (test_gpu_check waited ~80 s). The shared-memory op every engine loads is
# built first at normal priority, and is done before the multi-node cluster starts (CI saw a node
# miss `ray start`'s 30-s registration while a normal-priority build ran); CPU Adam follows in the
# background (sbs.student.ds_ops.lower_priority), taking only the CPU that the tests leave idle.
NEEDS_DS_OPS = ("test_gpu_check.py", "test_student_ray.py", "test_sweep.py", "test_multinode.py")


def pytest_collection_modifyitems(session, config, items):
    late = {name: i for i, name in enumerate(NEEDS_DS_OPS)}
    # stable: the other modules keep their order, the late ones follow in NEEDS_DS_OPS's order, and
    # the tests that step DeepSpeed's CPU Adam come last of all (`make test` builds that op second, at
    # low priority, in the cores the other tests leave idle)
    items.sort(key=lambda it: (it.get_closest_marker("cpu_adam") is not None, late.get(it.path.name, -1)))
