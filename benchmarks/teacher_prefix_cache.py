"""The hf backend's shared-prefix cache (`hf.prefix_cache`) on the real model, one actor's view (a
script, not a test):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/teacher_prefix_cache.py

Gemma 3 270M (fp32, 2 threads), SVAMP's few-shot prompt (~830 tokens, ~730 of them shared), the
dataset's stop strings, greedy. `HfGenerator` (the actor class of the pipeline) on a batch of 8 after
a warm-up batch of 8 (which computes the prefix when the cache is on): seconds for the batch with
1 new token (prefill alone) and with --max-tokens, cache on and off, and whether both give the
same texts. No Ray: the pipeline's own figures are teacher_gemma_bench.py's way (c).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/teacher_prefix_cache.py --batch-sizes 8,16,32,64

times the cache-on actor instead on one batch of each size (new rows each, --max-tokens), after the
same warm-up batch: seconds per example, for choosing the teacher's `batch_size`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def batch_sizes(text: str) -> list[int]:
    """`--batch-sizes`: comma-separated positive integers, e.g. 8,16,32."""
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"want comma-separated positive integers, got {text!r}")
    return sizes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batch-sizes", type=batch_sizes, default=[],
                   help="comma-separated batch sizes: time the cache-on actor on each")
    a = p.parse_args()
    import pyarrow as pa

    from sbs.config import load_config
    from sbs.teacher.backends.hf import HfGenerator
    from sbs.teacher.config import TeacherConfig
    from sbs.teacher.gemma import ensure_gemma
    from teacher_gemma_bench import prompts_for

    sizes = a.batch_sizes
    ex, prompts, stop = prompts_for(a.batch + (sum(sizes) if sizes else a.batch))
    rows = [{"id": e.id, "sample": 0, "prompt": q, "messages": ""} for e, q in zip(ex, prompts)]
    model, res, texts = str(ensure_gemma()), {}, {}

    def generator(on: bool, mt: int) -> HfGenerator:
        cfg = load_config(TeacherConfig, None, ["backend=hf", f"hf.model={model}", "num_cpus_per_actor=2",
                                                f"hf.prefix_cache={on}", f"sampling.max_tokens={mt}",
                                                "sampling.temperature=0", "dataset=svamp"])
        cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"stop": stop})})
        g = HfGenerator(cfg.model_dump_json(), chat=False)
        g(pa.Table.from_pylist(rows[:a.batch]))  # warm-up (computes the prefix when on)
        return g

    if sizes:
        g, i = generator(True, a.max_tokens), a.batch
        for b in sizes:
            t = time.time()
            out = g(pa.Table.from_pylist(rows[i:i + b])).to_pylist()
            s = time.time() - t
            i += b
            res[f"batch={b}"] = {"s_per_batch": round(s, 1), "s_per_example": round(s / b, 2),
                                 "tokens_out": sum(r["tokens_out"] for r in out)}
            print(json.dumps(res), flush=True)
        return 0
    for on in (True, False):
        for mt in (1, a.max_tokens):
            g = generator(on, mt)
            t = time.time()
            out = g(pa.Table.from_pylist(rows[a.batch:])).to_pylist()
            res[f"prefix_cache={on}, max_tokens={mt}"] = {"s_per_batch": round(time.time() - t, 1),
                                                          "tokens_out": sum(r["tokens_out"] for r in out)}
            texts[(on, mt)] = [r["text"] for r in out]
            print(json.dumps(res), flush=True)
    res["same_texts"] = all(texts[(True, mt)] == texts[(False, mt)] for mt in (1, a.max_tokens))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
