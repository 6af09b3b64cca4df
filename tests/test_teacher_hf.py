"""The hf backend: a tiny random causal LM built from a config (LlamaConfig + ByT5Tokenizer, no
downloads), saved to a local dir and loaded by path, through the Ray Data actor pool."""
import pyarrow.parquet as pq
import pytest

from sbs.config import load_config
from sbs.teacher.config import TeacherConfig
from sbs.teacher.pipeline import execute


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = ByT5Tokenizer()
    cfg = LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_hf_backend_generates_through_the_actor_pool(ray_local, tmp_path, tiny_lm):
    cfg = load_config(TeacherConfig, None, [
        f"out={tmp_path / 'h'}", "dataset=esnli", "split=valid", "limit=6", "backend=hf", f"hf.model={tiny_lm}",
        "prompt.mode=fewshot", "sampling.max_tokens=6", "batch_size=4", "shard_size=3", "num_actors=1",
        "hf.max_input_tokens=512", "progress=false"])
    stats = execute(cfg)
    acc = pq.read_table(tmp_path / "h" / "accepted").to_pylist()
    rej = pq.read_table(tmp_path / "h" / "rejects").to_pylist()
    ids = sorted(r["id"] for r in acc + rej)
    assert ids == [f"esnli-valid-{i:05d}" for i in range(6)]
    assert stats["counts_add_up"] and stats["sample_errors"] == 0 and stats["samples"] == 6
    # prompts were left-truncated to 512 byte tokens; each row produced 1..6 new tokens
    assert stats["tokens_in"] == 6 * 512 and 6 <= stats["tokens_out"] <= 36
    assert all(r["reason"] in {"empty_output", "no_answer_marker", "label_not_in_label_space", "too_long",
                               "gold_mismatch", "empty_rationale"} for r in rej)
    assert stats["teacher"].startswith("hf/tiny-llama")


def test_hf_chat_needs_a_chat_template(tiny_lm, tmp_path):
    cfg = load_config(TeacherConfig, None, [f"out={tmp_path}", "backend=hf", f"hf.model={tiny_lm}", "prompt.chat=true"])
    with pytest.raises(ValueError, match="no chat template"):
        execute(cfg)


def test_chat_template_model_gets_chat_messages_and_stops_at_stop_strings(tiny_lm, tmp_path):
    """A tokenizer with a chat template makes prompt.chat=auto pick the messages rendering; the
    generator (run in-process here) applies the template and cuts at the stop strings."""
    import json
    import shutil

    import pyarrow as pa
    from transformers import AutoTokenizer

    from sbs.teacher.backends.hf import HfBackend, HfGenerator

    d = tmp_path / "chat-lm"
    shutil.copytree(tiny_lm, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    tok.save_pretrained(d)
    cfg = load_config(TeacherConfig, None, [f"out={tmp_path}", "backend=hf", f"hf.model={d}", "sampling.max_tokens=12",
                                            "sampling.stop=[e, a]"])
    assert HfBackend(cfg).wants_chat
    gen = HfGenerator(cfg.model_dump_json(), chat=True)
    row = {"id": "x", "sample": 0, "prompt": "", "messages": json.dumps([{"role": "user", "content": "2+2?"}])}
    assert gen._text(row) == "<user>2+2?\n<assistant>"
    out = gen(pa.Table.from_pylist([row, {**row, "id": "y"}])).to_pylist()
    for r in out:
        assert r["error"] is None and r["tokens_in"] == len("<user>2+2?\n<assistant>".encode())
        assert "e" not in r["text"] and "a" not in r["text"] and 1 <= r["tokens_out"] <= 12
