"""`sbs serve`: deploy exported students behind one HTTP API with Ray Serve.

    sbs serve --config configs/serve/students.yaml                # 127.0.0.1:8000, Ctrl-C stops it
    sbs serve --config configs/serve/students.yaml port=8001 batching.max_batch_size=32
    sbs serve --config configs/serve/students.yaml --expose       # bind 0.0.0.0 (reachable from others)
    RAY_ADDRESS=auto sbs serve --config ... --detach              # deploy to a running cluster and return

Then: curl -s 127.0.0.1:8000/v1/predict -H 'content-type: application/json' \
        -d '{"dataset": "esnli", "input": {"premise": "A dog runs.", "hypothesis": "An animal moves."}}'
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sbs.config import load_config
from sbs.serve.config import ServeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="ServeConfig YAML (e.g. configs/serve/students.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. port=8001 batching.max_batch_size=32")
    p.add_argument("--expose", action="store_true",
                   help="bind 0.0.0.0 so other machines can reach the service (default: 127.0.0.1 only)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to deploy to (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--detach", action="store_true",
                   help="return once the app is healthy and leave it running (needs a long-lived cluster)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /healthz")


def base_url(cfg: ServeConfig) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host  # talk to ourselves over loopback
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def deploy(cfg: ServeConfig, ready_timeout: float = 300.0) -> str:
    """Start Serve's HTTP proxy on cfg.host:cfg.port, deploy the app, wait until healthy; return its URL."""
    from ray import serve

    from sbs.serve.app import app_from_config, wait_ready

    serve.start(proxy_location=cfg.proxy_location, http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app_from_config(cfg, base_dir=os.getcwd()), name=cfg.app_name, route_prefix=cfg.route_prefix,
              blocking=False)
    url = base_url(cfg)
    wait_ready(url, ready_timeout)
    return url


def config_from_cli(args: argparse.Namespace) -> ServeConfig:
    # --expose is applied last so it wins over a host= override: exposing is always explicit.
    return load_config(ServeConfig, args.config, list(args.overrides) + (["host=0.0.0.0"] if args.expose else []))


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from sbs.ray_local import connect

    cfg = config_from_cli(args)
    if cfg.is_exposed:
        print(f"sbs serve: binding {cfg.host}: the service is reachable from other machines "
              "(no authentication)", file=sys.stderr)
    connect(address=args.ray_address)
    url = deploy(cfg, args.ready_timeout)
    students = [s.dataset for s in cfg.students]
    print(json.dumps({"url": url, "students": students, "predict": f"{url}/v1/predict"}))
    if args.detach:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
