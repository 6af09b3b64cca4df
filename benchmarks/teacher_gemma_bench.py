"""Teacher throughput on the real model, five ways in one run on one machine (a script, not a test).

    .venv/bin/python benchmarks/teacher_gemma_bench.py --json results/teacher_gemma_bench.json
    .venv/bin/python benchmarks/teacher_gemma_bench.py --examples 32 --loop-examples 8    # quicker

Gemma 3 270M (the shipped live teacher, `sbs.teacher.gemma`), SVAMP's few-shot prompt (~830
tokens), the dataset's stop strings, at most --max-tokens new tokens, greedy decoding, the first
--examples training problems that are not exemplars:

  (a) a one-at-a-time transformers loop (`generate` per prompt, `stop_strings`): --loop-examples
      of them (its cost is linear in the count);
  (b) a batched transformers loop (left-padded batches of --batch);
  (c) the sbs `hf` backend in the Ray Data pipeline (`sbs.teacher.pipeline.execute`), its shared
      few-shot prefix computed once per actor (`hf.prefix_cache`);
  (d) bare vLLM `LLM.generate` on the same prompts, with sbs's own engine arguments
      (`sbs.teacher.backends.vllm.engine_kwargs`, prefix caching on): the anchor;
  (e) the sbs `vllm` backend in the Ray Data pipeline (`ray.data.llm`), same engine arguments.

(d) and (e) run in `.venv-vllm` (`make vllm-env`). Per way: examples/s with start-up and at steady
state, output tokens/s, start-up seconds (model load; engine or actor start), the share of outputs
parsed to an answer by the dataset's parser; for (d) the prefix-cache hit rate from the engine's
own counters. Steady state for the pipelines is read from when their shards were committed (the
ledger), first shard to last. Ratios at the end: (e)/(a), (e)/(d), (c)/(a), with start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def prompts_for(n: int) -> tuple[list, list[str], list[str]]:
    """(examples, their few-shot prompts, the stop strings): what the teacher stage asks."""
    from sbs.datasets import get_dataset
    from sbs.teacher.prompts import Renderer, default_stop, load_prompt

    ds = get_dataset("svamp")
    r = Renderer(load_prompt(ds), "fewshot")
    ex = [e for e in ds.load("train") if e.id not in r.exemplar_ids][:n]
    return ex, [r.completion(e.input) for e in ex], default_stop(ds)


def parsed_share(texts: list[str], examples: list) -> float:
    from sbs.datasets import Parsed, get_dataset

    ds = get_dataset("svamp")
    return round(sum(isinstance(ds.parse(t, e), Parsed) for t, e in zip(texts, examples)) / max(1, len(texts)), 3)


def parsed_of(stats: dict) -> float:
    """Pipelines: with the gold filter off, an asked example is accepted exactly when it parsed."""
    return round(stats["accepted"] / max(1, stats["samples"]), 3)


def way(name: str, n: int, startup_s: float, run_s: float, tokens_out: int, parsed: float,
        steady_ex_per_s: float | None = None, **extra) -> dict:
    total = startup_s + run_s
    return {"way": name, "examples": n, "startup_s": round(startup_s, 1), "run_s": round(run_s, 1),
            "ex_per_s_with_startup": round(n / total, 3),
            "ex_per_s_steady": round(steady_ex_per_s if steady_ex_per_s is not None else n / run_s, 3),
            "output_tokens_per_s": round(tokens_out / run_s, 1), "tokens_out": tokens_out, "parsed_share": parsed,
            **extra}


def hf_loop(model_path: str, prompts: list[str], stop: list[str], max_tokens: int, batch: int, threads: int
            ) -> tuple[float, float, list[str], int]:
    """(load s, generate s, texts, output tokens) of a plain transformers loop, `batch` prompts a call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    t = time.time()
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    load = time.time() - t
    texts, n_out = [], 0
    t = time.time()
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, stop_strings=stop,
                                 tokenizer=tok, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        for row in new:
            ids = [x for x in row.tolist() if x != tok.pad_token_id]
            n_out += len(ids)
            text = tok.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            texts.append(text[:cut] if cut >= 0 else text)
    return load, time.time() - t, texts, n_out


def steady_from_ledger(out: Path, wall_s: float) -> float | None:
    """Examples/s between the first and the last committed shard. None with fewer than 2 shards, or
    when the shards landed in a burst (within a tenth of the wall time): the pipeline held its
    outputs back (ray.data.llm's stage does), so the ledger does not show its steady state."""
    shards = sorted((out / "_ledger").glob("shard-*.json"), key=lambda p: p.stat().st_mtime)
    if len(shards) < 2:
        return None
    sizes = [json.loads(p.read_text()).get("samples", 0) for p in shards]
    dt = shards[-1].stat().st_mtime - shards[0].stat().st_mtime
    return sum(sizes[1:]) / dt if dt > 0.1 * wall_s and all(sizes) else None


def pipeline_way(name: str, stats: dict, wall: float, out: Path, **extra) -> dict:
    """A pipeline's figures: its start-up is what its wall has beyond the steady-state work the
    ledger shows; when the ledger cannot show it, only the rate with start-up is known."""
    steady = steady_from_ledger(out, wall)
    if steady is None:
        return {"way": name, "examples": stats["samples"], "startup_s": None, "run_s": None,
                "ex_per_s_with_startup": round(stats["samples"] / wall, 3), "ex_per_s_steady": None,
                "output_tokens_per_s": None, "tokens_out": stats["tokens_out"], "parsed_share": parsed_of(stats),
                "wall_s": round(wall, 1), **extra}
    startup = max(0.0, wall - stats["samples"] / steady)
    return way(name, stats["samples"], startup, wall - startup, stats["tokens_out"], parsed_of(stats),
               steady_ex_per_s=steady, wall_s=round(wall, 1), **extra)


def teacher_overrides(model_path: str, n_asked: int, max_tokens: int, shard: int) -> list[str]:
    from sbs.datasets import get_dataset
    from sbs.teacher.prompts import Renderer, load_prompt

    # `limit` counts the exemplars among the first rows too; they are skipped, not asked
    ds = get_dataset("svamp")
    ex_ids = Renderer(load_prompt(ds), "fewshot").exemplar_ids
    rows = ds.load("train")
    limit, asked = 0, 0
    while asked < n_asked:
        asked += rows[limit].id not in ex_ids
        limit += 1
    return ["dataset=svamp", "split=train", f"limit={limit}", f"sampling.max_tokens={max_tokens}",
            "sampling.temperature=0", "filter.gold_consistency=false", f"shard_size={shard}", "progress=false"]


VLLM_BARE = r"""
import json, sys, time
from vllm import LLM, SamplingParams
from sbs.config import load_config
from sbs.teacher.config import TeacherConfig
from sbs.teacher.backends.vllm import engine_kwargs
a = json.load(open(sys.argv[1]))
cfg = load_config(TeacherConfig, None, ["backend=vllm", f"vllm.model={a['model']}", "vllm.device=cpu"])
kw = dict(engine_kwargs(cfg), disable_log_stats=False)  # the engine's counters: prefix-cache hits
t = time.time()
llm = LLM(model=a["model"], **kw)
startup = time.time() - t
sp = SamplingParams(temperature=0.0, max_tokens=a["max_tokens"], stop=a["stop"])
t = time.time()
outs = llm.generate(a["prompts"], sp)
run = time.time() - t
hits = queries = None
try:
    for m in llm.get_metrics():
        if m.name == "vllm:prefix_cache_hits":
            hits = m.value
        elif m.name == "vllm:prefix_cache_queries":
            queries = m.value
except Exception as e:  # older engines: no metrics API
    print("no engine metrics:", e, file=sys.stderr)
json.dump({"startup_s": startup, "run_s": run, "texts": [o.outputs[0].text for o in outs],
           "tokens_out": sum(len(o.outputs[0].token_ids) for o in outs),
           "prefix_cache_hit_rate": (hits / queries) if hits is not None and queries else None,
           "engine_kwargs": kw}, open(sys.argv[2], "w"))
"""


def vllm_python(arg: str | None) -> Path:
    py = Path(arg) if arg else ROOT / ".venv-vllm" / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"--vllm-python: {py} not found; build it with `make vllm-env`")
    return py


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=256, help="prompts for (b)-(e)")
    p.add_argument("--loop-examples", type=int, default=16, help="prompts for (a), the one-at-a-time loop")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="(b) and (c): prompts per generate call "
                   "(the teacher's default batch_size)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of (a)-(c); CPUs of every way")
    p.add_argument("--model", help="a local causal LM directory (default: the converted Gemma 3 270M)")
    p.add_argument("--vllm-python", help="python of the vLLM environment (default .venv-vllm)")
    p.add_argument("--ways", default="abcde", help="which of a-e to run")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()
    from sbs.teacher.gemma import ensure_gemma

    model = a.model or str(ensure_gemma())
    ex, prompts, stop = prompts_for(a.examples)
    # committed results name no machine's paths: the default model by name, paths under this script's
    # checkout relative to it (wherever the script is run from)
    from sbs.experiments.sweep import portable

    res: dict = {"model": portable(str(Path(a.model).resolve()), ROOT) if a.model
                 else "gemma3-270m (sbs.teacher.gemma.ensure_gemma)",
                 "dataset": "svamp (train, few-shot prompt)", "max_tokens": a.max_tokens,
                 "stop": stop, "prompt_chars_mean": round(statistics.mean(map(len, prompts))),
                 "cpus": a.threads, "machine": os.uname().machine, "ways": {}}
    work = Path(tempfile.mkdtemp(prefix="sbs-teacher-bench-"))
    # resumable: with --json, each way's figures land as it finishes; a rerun with the same settings
    # keeps the ways already there and runs the rest
    res["settings"] = {k: portable(str(Path(v).resolve()), ROOT) if k in ("json", "model", "vllm_python") and v else v
                       for k, v in vars(a).items() if k != "ways"}
    if a.json and Path(a.json).is_file():
        old = json.loads(Path(a.json).read_text())

        def what(r: dict) -> dict:  # what was measured, and how (not where the JSON is written)
            return {k: ({x: y for x, y in v.items() if x != "json"} if k == "settings" else v)
                    for k, v in r.items() if k not in ("ways", "ratios_with_startup", "ratios_steady")}

        if what(old) == what(res):
            res["ways"] = old.get("ways", {})
            print(f"resuming {a.json}: ways {sorted(res['ways'])} already measured", flush=True)

    def show(key: str, r: dict) -> None:
        res["ways"][key] = r
        print(json.dumps(r), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))

    todo = [k for k in a.ways if k not in res["ways"]]

    if "a" in todo:
        n = min(a.loop_examples, len(prompts))
        load, run, texts, n_out = hf_loop(model, prompts[:n], stop, a.max_tokens, 1, a.threads)
        show("a", way("transformers, one at a time", n, load, run, n_out, parsed_share(texts, ex[:n])))
    if "b" in todo:
        load, run, texts, n_out = hf_loop(model, prompts, stop, a.max_tokens, a.batch, a.threads)
        show("b", way(f"transformers, batches of {a.batch}", len(prompts), load, run, n_out, parsed_share(texts, ex),
                      batch=a.batch))
    if "c" in todo:
        import ray

        from sbs.config import load_config
        from sbs.teacher.config import TeacherConfig
        from sbs.teacher.pipeline import execute

        out = work / "hf"
        cfg = load_config(TeacherConfig, None, teacher_overrides(model, len(prompts), a.max_tokens, 4 * a.batch) + [
            "backend=hf", f"hf.model={model}", f"batch_size={a.batch}", "num_actors=1",
            f"num_cpus_per_actor={a.threads}", f"out={out}"])
        from sbs.teacher.cli import cpus_needed

        ray.init(address="local", num_cpus=cpus_needed(cfg), include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(work / "ray"))
        try:
            t = time.time()
            stats = execute(cfg)
            wall = time.time() - t
        finally:
            ray.shutdown()
        show("c", pipeline_way("sbs hf backend, Ray Data pipeline", stats, wall, out, batch=a.batch,
                               prefix_cache=cfg.hf.prefix_cache))
    if "d" in todo:
        py = vllm_python(a.vllm_python)
        args = work / "bare_in.json"
        args.write_text(json.dumps({"model": model, "prompts": prompts, "stop": stop, "max_tokens": a.max_tokens}))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_NO_USAGE_STATS": "1", "OMP_NUM_THREADS": str(a.threads)}
        r = subprocess.run([str(py), "-c", VLLM_BARE, str(args), str(work / "bare_out.json")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise SystemExit(f"(d) bare vLLM failed:\n{r.stderr[-4000:]}")
        o = json.loads((work / "bare_out.json").read_text())
        show("d", way("bare vLLM LLM.generate", len(prompts), o["startup_s"], o["run_s"], o["tokens_out"],
                      parsed_share(o["texts"], ex), prefix_cache_hit_rate=o["prefix_cache_hit_rate"],
                      engine_kwargs=o["engine_kwargs"]))
    if "e" in todo:
        py = vllm_python(a.vllm_python)
        out = work / "vllm"
        cmd = [str(py), "-m", "sbs.cli", "rationales", "--config", str(ROOT / "configs/teacher/svamp.yaml"),
               "backend=vllm", f"vllm.model={model}", "vllm.device=cpu",
               f"num_cpus_per_actor={a.threads}", f"out={out}",
               *teacher_overrides(model, len(prompts), a.max_tokens, 32)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_NO_USAGE_STATS": "1", "OMP_NUM_THREADS": "1"}
        env.pop("RAY_ADDRESS", None)
        t = time.time()
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600,
                           start_new_session=True)
        wall = time.time() - t
        if r.returncode != 0:
            raise SystemExit(f"(e) sbs vllm pipeline failed:\n{r.stderr[-4000:]}")
        stats = json.loads((out / "stats.json").read_text())
        show("e", pipeline_way("sbs vllm backend, Ray Data pipeline (ray.data.llm)", stats, wall, out))
    w = res["ways"]

    def ratio(x: str, y: str, key: str = "ex_per_s_with_startup") -> float | None:
        num, den = (w[x][key], w[y][key]) if x in w and y in w else (None, None)
        return round(num / den, 2) if num and den else None

    res["ratios_with_startup"] = {"e_over_a": ratio("e", "a"), "e_over_d": ratio("e", "d"), "c_over_a": ratio("c", "a"),
                                  "b_over_a": ratio("b", "a")}
    res["ratios_steady"] = {"e_over_a": ratio("e", "a", "ex_per_s_steady"), "e_over_d": ratio("e", "d", "ex_per_s_steady"),
                            "c_over_a": ratio("c", "a", "ex_per_s_steady")}
    print(json.dumps({"ratios_with_startup": res["ratios_with_startup"], "ratios_steady": res["ratios_steady"]}))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
