"""Gemma 3 270M on CPU: transformers (GGUF de-quantised to fp32, cached) vs a GGUF runtime.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gemma_runtimes.py [--threads 1 2] [--tokens 48]

Prints one JSON line per (runtime, threads, prompt): load seconds, prompt tokens, new tokens,
generation seconds and tokens/s, on a short prompt and on the real few-shot SVAMP prompt (~830
tokens, so prefill counts). The GGUF runtime is `llama-cpp-py-sync` (a prebuilt llama.cpp CPU
wheel from PyPI; `llama-cpp-python` has no wheel there and would compile llama.cpp); it is
measured only when installed and its library loads (0.11739's needs glibc >= 2.38). Greedy decoding, the same prompts for both. Ratios at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import time

SHORT = "Q: Jack had 5 apples. He ate 2. How many are left?\nA:"


def fewshot_prompt() -> str:
    from sbs.datasets import get_dataset
    from sbs.teacher.prompts import Renderer, load_prompt

    ds = get_dataset("svamp")
    return Renderer(load_prompt(ds), "fewshot").completion(ds.load("train")[1].input)


def bench_transformers(threads: int, prompts: dict[str, str], tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sbs.teacher.gemma import ensure_gemma

    torch.set_num_threads(threads)
    t = time.time()
    path = ensure_gemma()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load = time.time() - t
    rows = []
    for name, prompt in prompts.items():
        x = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            t = time.time()
            out = model.generate(**x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            dt = time.time() - t
        n = out.shape[1] - x["input_ids"].shape[1]
        rows.append({"runtime": "transformers-fp32", "threads": threads, "prompt": name, "load_s": round(load, 1),
                     "prompt_tokens": x["input_ids"].shape[1], "new_tokens": n, "gen_s": round(dt, 2),
                     "tokens_per_s": round(n / dt, 2)})
    return rows


def bench_llamacpp(threads: int, prompts: dict[str, str], tokens: int) -> list[dict]:
    import llama_cpp_py_sync as llama

    from sbs.teacher.gemma import gguf_path

    t = time.time()
    llm = llama.Llama(str(gguf_path()), n_ctx=2048, n_threads=threads, verbose=False)
    load = time.time() - t
    rows = []
    for name, prompt in prompts.items():
        t = time.time()
        n = sum(1 for _ in llm.generate(prompt, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0,
                                        stream=True))
        dt = time.time() - t
        rows.append({"runtime": "llama.cpp-q4_k_m", "threads": threads, "prompt": name, "load_s": round(load, 2),
                     "prompt_tokens": len(llm.tokenize(prompt)), "new_tokens": n, "gen_s": round(dt, 2),
                     "tokens_per_s": round(n / dt, 2)})
    llm.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=48)
    a = p.parse_args()
    prompts = {"short": SHORT, "fewshot": fewshot_prompt()}
    rows = []
    for th in a.threads:
        for fn in (bench_llamacpp, bench_transformers):
            try:
                got = fn(th, prompts, a.tokens)
            except (ImportError, OSError, RuntimeError) as e:  # not installed, or its library will not load
                print(json.dumps({"runtime": fn.__name__, "skipped": f"{type(e).__name__}: {str(e)[:300]}"}))
                continue
            for r in got:
                r["loadavg_1m"] = round(os.getloadavg()[0], 1)
                print(json.dumps(r), flush=True)
            rows += got
    by = {(r["runtime"], r["threads"], r["prompt"]): r for r in rows}
    for th in a.threads:
        for name in prompts:
            a_, b_ = by.get(("llama.cpp-q4_k_m", th, name)), by.get(("transformers-fp32", th, name))
            if a_ and b_:
                print(json.dumps({"ratio": "llama.cpp/transformers tokens_per_s", "threads": th, "prompt": name,
                                  "value": round(a_["tokens_per_s"] / b_["tokens_per_s"], 2)}))


if __name__ == "__main__":
    main()
