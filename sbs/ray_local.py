"""How every sbs entry point connects to Ray: one function, `connect`.

Under `ray job submit` (or with RAY_ADDRESS set, or an explicit address) the driver joins that
cluster. Otherwise it starts a private local instance, never touching other Ray processes on the
host (`ray stop` would end them all), and without the dashboard: on two cores it costs a process
and memory that the run needs. Without the dashboard Ray's state API is down, and Ray Train's
placement-group cleaner then warns every few seconds that it cannot query the controller (it only
watches for a crashed driver, to free the workers' placement group). The worker setup hook below
quiets that one logger in every worker; nothing else is filtered.
"""
from __future__ import annotations

import logging
import os

QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """worker_process_setup_hook: runs once in every Ray worker process of the job."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(num_cpus: int | None = None, log_to_driver: bool = True, address: str | None = None) -> None:
    """Join the cluster (`address`, else RAY_ADDRESS) or start a private local Ray with `num_cpus`.

    A no-op when this process is already connected (a test's instance, or the sweep's cells, which
    run inside Ray tasks). `num_cpus` only sizes a local instance: a cluster has its own.
    """
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        # The job's runtime_env (from `ray job submit`) applies; adding one here would replace it.
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
             _temp_dir=os.environ.get("SBS_RAY_TEMP_DIR"),
             runtime_env={"worker_process_setup_hook": "sbs.ray_local.quiet_worker_logs"})
