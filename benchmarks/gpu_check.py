"""The prepared GPU check: what the CPU machines cannot measure, in one short call (< 10 min).

    python benchmarks/gpu_check.py --out gpu_check.json      # one GPU (H100/H200); also the last stdout line
    python benchmarks/gpu_check.py --tiny --device cpu       # the same code at toy sizes (tests/test_gpu_check.py)

Needs only PyTorch and transformers: no Ray, vLLM, DeepSpeed or network; every model is built
from a config with random weights (the figures are throughput, not accuracy). Three parts:

1. **Student step, T5-Base size** (T5Config as t5-base: d_model 768, 12+12 layers, 32,128
   vocabulary, ~223 M parameters), bf16 autocast over fp32 weights, AdamW, batch 64 at e-SNLI's
   measured lengths (docs/capacity.md, Gemma column, rounded up: input 64 tokens for p95 46,
   label 4 for max 3, rationale 32 for p95 22): the standard step (label task) and the paper's
   multi-task step (label + rationale passes), seconds per step and examples/s.
2. **Generation throughput of a ~1B causal model** (LlamaConfig: hidden 2048, 16 layers,
   intermediate 8192, 32k vocabulary, ~1.1 B parameters), bf16 weights, 64 prompts of 366
   tokens (the e-SNLI few-shot teacher prompt) and 32 new greedy tokens: output tokens/s. This is
   HF `generate`, the floor a vLLM engine is measured against (docs/capacity.md).
3. **DeepSpeed with sbs's own config** (only when `deepspeed` and sbs's config layer, pydantic,
   import; otherwise the JSON says why not): sbs.student.loop.deepspeed_config for ZeRO-2 bf16,
   one process, the same T5-Base batch, seconds per step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch

# e-SNLI, Gemma tokenizer (docs/capacity.md section 1), rounded up to what a padded batch holds
ESNLI = {"input": 64, "label": 4, "rationale": 32, "teacher_prompt": 366, "teacher_new": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "steps": steps}


def t5_config(tiny: bool) -> Any:
    from transformers import T5Config

    if tiny:
        return T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def student_batches(vocab: int, batch: int, device: torch.device, gen: torch.Generator) -> dict[str, dict]:
    def ids(n: int) -> torch.Tensor:
        return torch.randint(2, vocab, (batch, n), generator=gen).to(device)

    x = ids(ESNLI["input"])
    mask = torch.ones_like(x)
    return {"label": {"input_ids": x, "attention_mask": mask, "labels": ids(ESNLI["label"])},
            "rationale": {"input_ids": x, "attention_mask": mask, "labels": ids(ESNLI["rationale"])}}


def student_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from transformers import T5ForConditionalGeneration

    gen = torch.Generator().manual_seed(0)
    model = T5ForConditionalGeneration(t5_config(args.tiny)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = student_batches(model.config.vocab_size, args.batch, device, gen)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step(tasks: tuple[str, ...]) -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = sum(model(**b[t]).loss for t in tasks)  # multitask: L_label + 1.0 * L_rationale
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    out: dict[str, Any] = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                           "batch": args.batch, "lengths": {k: ESNLI[k] for k in ("input", "label", "rationale")},
                           "bf16_autocast": args.bf16}
    for name, tasks in (("standard", ("label",)), ("multitask", ("label", "rationale"))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = timed(lambda tasks=tasks: step(tasks), device, args.steps, args.warmup)
        r["examples_per_s"] = round(args.batch / r["median_s"], 1)
        if device.type == "cuda":
            r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out[name] = r
    out["multitask_over_standard"] = round(out["multitask"]["median_s"] / out["standard"]["median_s"], 3)
    return out


def generation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, cfg.vocab_size, (args.gen_batch, ESNLI["teacher_prompt"]), generator=gen).to(device)
    new = ESNLI["teacher_new"]

    def run() -> None:
        with torch.no_grad():
            # min_new_tokens: a random model may emit EOS early; every row makes exactly `new` tokens
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)

    r = timed(run, device, max(1, args.steps // 2), 1)
    return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "dtype": str(dtype),
            "batch": args.gen_batch, "prompt_tokens": ESNLI["teacher_prompt"], "new_tokens": new, **r,
            "output_tokens_per_s": round(args.gen_batch * new / r["median_s"], 1),
            "prompts_per_s": round(args.gen_batch / r["median_s"], 2)}


def deepspeed_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One process of sbs's DeepSpeed path: its own config for ZeRO-2 (bf16 on a GPU)."""
    try:
        import deepspeed

        from sbs.student.config import load_train_config
        from sbs.student.loop import deepspeed_config
    except Exception as e:  # noqa: BLE001 - the JSON names what was missing
        return {"skipped": f"not importable here: {type(e).__name__}: {e}"}
    from transformers import T5ForConditionalGeneration

    cuda = device.type == "cuda"
    cfg = load_train_config(None, ["model.name=tiny-t5", "method.name=standard", "train.engine=deepspeed",
                                   "train.zero_stage=2", f"train.bf16={str(args.bf16 and cuda).lower()}",
                                   f"train.global_batch={args.batch}", f"train.micro_batch={args.batch}",
                                   f"scale.use_gpu={str(cuda).lower()}"])
    ds_cfg = deepspeed_config(cfg)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", "29531"),
                       "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    model = T5ForConditionalGeneration(t5_config(args.tiny)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg)
    b = student_batches(model.config.vocab_size, args.batch, device, torch.Generator().manual_seed(0))

    def step() -> None:
        loss = engine(**b["label"]).loss
        engine.backward(loss)
        engine.step()

    return {"config": ds_cfg, "deepspeed": deepspeed.__version__, "standard": timed(step, device, args.steps,
                                                                                     args.warmup)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes: checks the code, measures nothing")
    p.add_argument("--batch", type=int, default=64, help="student batch")
    p.add_argument("--gen-batch", type=int, default=64, help="generation batch (prompts)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per student measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 throughout")
    p.add_argument("--skip-deepspeed", action="store_true")
    p.add_argument("--out", help="also write the JSON here (DeepSpeed prints its own lines on stdout)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu --tiny to check the code)")
    torch.manual_seed(0)
    t0 = time.time()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__, "tiny": args.tiny,
        "student_step_t5_base": student_step(args, device),
        "generation_1b": generation(args, device),
        "deepspeed_zero2": {"skipped": "--skip-deepspeed"} if args.skip_deepspeed else deepspeed_step(args, device),
    }
    report["wall_s"] = round(time.time() - t0, 1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
