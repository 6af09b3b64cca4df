"""Load benchmark of the served student: dynamic batching on vs off, label-only vs explain.

    .venv/bin/python benchmarks/serve_load.py                          # MiniLM-size student, 8 clients x 20 s
    .venv/bin/python benchmarks/serve_load.py --model tiny-t5 --clients 4 --seconds 5
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --dataset esnli   # a running app

Without --url it starts a private local Ray, writes a random-weight student (`--model minilm`: the
real all-MiniLM-L6-v2 encoder + a MiniLM decoder with random cross-attention, ~49 M parameters; its
labels are arbitrary but its latency is that of a small student), serves it on 127.0.0.1, and runs
N concurrent clients for T seconds (or --max-requests) per condition:
  batched   label-only, @serve.batch max_batch_size=--batch-size
  unbatched label-only, max_batch_size=1
  explain   batched, explain: true (label + rationale)
It prints requests/s, p50/p99 latency, errors and the batch sizes the replica saw, then the ratios
batched/unbatched and label-only/explain. Not a test: the figures depend on the machine's load.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXAMPLE = {"premise": "A man in a blue shirt is playing a guitar on a small stage in front of a crowd.",
           "hypothesis": "A person is performing music for an audience."}


async def _client(session: Any, url: str, body: dict, deadline: float, budget: list[int],
                  lat: list[float], errors: list[str]) -> None:
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=body) as r:
                await r.read()
                if r.status != 200:
                    errors.append(f"{r.status}: {(await r.text())[:200]}")
                    continue
        except Exception as e:  # connection errors count, they do not stop the benchmark
            errors.append(type(e).__name__)
            continue
        lat.append(time.perf_counter() - t0)


async def load(url: str, body: dict, clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """`clients` concurrent closed-loop clients for `seconds` (at most `max_requests` in all)."""
    import aiohttp

    lat: list[float] = []
    errors: list[str] = []
    budget = [max_requests]
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*[_client(s, url + "/v1/predict", body, t0 + seconds, budget, lat, errors)
                               for _ in range(clients)])
        wall = time.perf_counter() - t0
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors)), "wall_s": wall,
            "rps": len(lat) / wall, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def _stats(url: str, dataset: str) -> dict[str, Any]:
    import requests

    return requests.get(url + "/v1/stats", timeout=30).json()[dataset]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, dataset: str, explain: bool, args: argparse.Namespace) -> dict[str, Any]:
    body = {"dataset": dataset, "input": EXAMPLE, "explain": explain}
    warm = asyncio.run(load(url, body, 2, 2.0, 50))  # warm-up: first generate() calls are slow
    if warm["errors"]:
        raise SystemExit(f"serve_load: the app rejects the benchmark request: {warm['error_kinds'][:3]}")
    before = _stats(url, dataset) if not args.url else None
    res = asyncio.run(load(url, body, args.clients, args.seconds, args.max_requests))
    if before is not None:
        after = _stats(url, dataset)
        n = after["batches"] - before["batches"]
        res["mean_batch_size"] = (after["examples"] - before["examples"]) / n if n else 0.0
    return res


def run_local(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    import ray
    from ray import serve

    from sbs.serve.cli import deploy
    from sbs.serve.config import ServeConfig
    from sbs.serve.sample_models import make_export

    tmp = Path(tempfile.mkdtemp(prefix="sbs_serve_load_"))
    export = make_export(tmp / "esnli", "esnli", "multitask", kind=args.model, max_input_length=256,
                         max_label_length=args.label_len, max_rationale_length=args.rationale_len)
    ray.init(address="local", num_cpus=args.num_cpus + 1, include_dashboard=False, log_to_driver=False)
    port = _free_port()

    def config(batch: int) -> ServeConfig:
        return ServeConfig(port=port, students=[{"dataset": "esnli", "export_dir": str(export)}],
                           batching={"max_batch_size": batch, "batch_wait_timeout_s": args.wait_s},
                           ray_actor_options={"num_cpus": args.num_cpus}, max_items_per_request=64)

    out: dict[str, dict[str, Any]] = {}
    try:
        url = deploy(config(args.batch_size), ready_timeout=600)
        out["batched"] = measure(url, "esnli", False, args)
        out["explain"] = measure(url, "esnli", True, args)
        url = deploy(config(1), ready_timeout=600)  # same app, replica restarted with batching off
        out["unbatched"] = measure(url, "esnli", False, args)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="measure a running app (one condition: label-only, or --explain)")
    p.add_argument("--dataset", default="esnli", help="with --url: the served dataset to ask (e-SNLI-shaped input)")
    p.add_argument("--explain", action="store_true", help="with --url: ask for rationales")
    p.add_argument("--model", choices=["minilm", "tiny-t5"], default="minilm")
    p.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients")
    p.add_argument("--seconds", type=float, default=20.0, help="time per condition")
    p.add_argument("--max-requests", type=int, default=5000, help="cap per condition")
    p.add_argument("--batch-size", type=int, default=16, help="max_batch_size of the batched condition")
    p.add_argument("--wait-s", type=float, default=0.01, help="batch_wait_timeout_s")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the student replica (= torch threads)")
    p.add_argument("--label-len", type=int, default=8, help="max label tokens (label-only decoding)")
    p.add_argument("--rationale-len", type=int, default=64, help="max rationale tokens (explain)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--quick", action="store_true", help="5 s per condition, 4 clients")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.clients = min(args.seconds, 5.0), min(args.clients, 4)
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600 or args.max_requests < 1:
        p.error("--clients in 1..256, --seconds in (0, 600], --max-requests >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    if args.url:
        res = {"explain" if args.explain else "label": measure(args.url, args.dataset, args.explain, args)}
    else:
        res = run_local(args)
    print(f"{'condition':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'requests':>8} {'batch':>6}")
    for name, r in res.items():
        print(f"{name:<10} {r['rps']:>8.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6} "
              f"{r['requests']:>8} {r.get('mean_batch_size', float('nan')):>6.2f}"
              + (f"  errors: {r['error_kinds']}" if r["errors"] else ""))
    summary: dict[str, Any] = {"model": args.model if not args.url else args.url, "clients": args.clients,
                               "seconds": args.seconds, "conditions": res}
    if {"batched", "unbatched", "explain"} <= set(res) and all(r["requests"] for r in res.values()):
        b, u, e = res["batched"], res["unbatched"], res["explain"]
        summary["ratios"] = {"batched_over_unbatched_rps": b["rps"] / u["rps"],
                             "unbatched_over_batched_p50": u["p50_ms"] / b["p50_ms"],
                             "label_over_explain_rps": b["rps"] / e["rps"],
                             "explain_over_label_p50": e["p50_ms"] / b["p50_ms"]}
        for k, v in summary["ratios"].items():
            print(f"{k}: {v:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if all(r["errors"] == 0 for r in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
