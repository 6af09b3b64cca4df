"""The private local Ray instance a CLI run starts when no cluster is given (RAY_ADDRESS unset).

`sbs demo`, `sbs train` and `sbs rationales` start Ray without its dashboard: on two cores it
costs a process and memory that the run needs. Without the dashboard Ray's state API is down, and
Ray Train's placement-group cleaner then warns every few seconds that it cannot query the
controller (it only watches for a crashed driver, to free the workers' placement group). The
worker setup hook below quiets that one logger in every worker; nothing else is filtered.
"""
from __future__ import annotations

import logging
import os

QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """worker_process_setup_hook: runs once in every Ray worker process of the job."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_local(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
             _temp_dir=os.environ.get("SBS_RAY_TEMP_DIR"),
             runtime_env={"worker_process_setup_hook": "sbs.ray_local.quiet_worker_logs"})
