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
