"""The hf backend: a tiny random causal LM built from a config (LlamaConfig + ByT5Tokenizer, no
downloads), saved to a local dir and loaded by path, through the Ray Data actor pool."""
import json

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
    assert stats["teacher_model"].startswith("hf/tiny-llama")


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


def _generator(model, *overrides):
    from sbs.teacher.backends.hf import HfGenerator

    cfg = load_config(TeacherConfig, None, ["backend=hf", f"hf.model={model}", *overrides])
    return HfGenerator(cfg.model_dump_json(), chat=False)


def test_sampled_rows_do_not_depend_on_their_batch(tiny_lm):
    """Each row samples with seed + sample (backends/base.py), so batch size 1 and 3 (padding,
    neighbours, position in the batch) give the same text per row."""
    import pyarrow as pa

    gen = _generator(tiny_lm, "sampling.temperature=1.0", "sampling.top_p=0.9", "sampling.max_tokens=8",
                     "sampling.stop=[]", "sampling.seed=5")
    rows = [{"id": f"q{i}", "sample": i % 2, "prompt": "Q: " + "why? " * (i + 1) + "\nA:", "messages": ""}
            for i in range(3)]
    batched = gen(pa.Table.from_pylist(rows)).to_pylist()
    alone = [gen(pa.Table.from_pylist([r])).to_pylist()[0] for r in rows]
    assert [r["text"] for r in batched] == [r["text"] for r in alone]
    assert all(r["error"] is None and r["tokens_out"] == 8 for r in batched)
    # the seed is real: another sample index (or base seed) draws another text for the same prompt
    other = gen(pa.Table.from_pylist([{**rows[0], "sample": 1}])).to_pylist()[0]
    assert other["text"] != alone[0]["text"]


def test_stop_strings_end_generation_and_cut_the_same_text(tiny_lm):
    """A stop string taken from the greedy continuation: generation stops right after it (only the
    newest tokens are decoded each step) and the text is the unstopped text cut before it."""
    import pyarrow as pa

    row = {"id": "x", "sample": 0, "prompt": "Premise: a cat\nHypothesis:", "messages": ""}
    full = _generator(tiny_lm, "sampling.max_tokens=24", "sampling.stop=[]")(pa.Table.from_pylist([row])).to_pylist()[0]
    assert full["tokens_out"] == 24 and len(full["text"]) >= 12
    stop = full["text"][8:11]
    j = full["text"].find(stop)
    cut = _generator(tiny_lm, "sampling.max_tokens=24", f"sampling.stop=[{json.dumps(stop)}]")(
        pa.Table.from_pylist([row])).to_pylist()[0]
    assert cut["text"] == full["text"][:j] and cut["tokens_out"] < 24


def test_stop_check_decodes_only_the_newest_tokens(tiny_lm):
    """Per step the criterion decodes a few tokens, not the whole continuation, and still fires at
    the step that completes a stop string (one split over several tokens included)."""
    import torch
    from transformers import AutoTokenizer

    from sbs.teacher.backends.hf import _StopOnStrings

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    widths = []

    class Counting:
        def decode(self, ids, **kw):
            widths.append(len(ids))
            return tok.decode(ids, **kw)

    ids = torch.tensor([tok("Q: x\nA:" + "y" * 300 + "\nQ: next")["input_ids"][:-1]])  # drop the EOS
    crit = _StopOnStrings(Counting(), prompt_len=7, stops=["\nQ:"], eos_ids=[tok.eos_token_id])
    fired = [int(crit(ids[:, :n], None)[0]) for n in range(8, ids.shape[1] + 1)]
    assert fired.index(1) + 8 == 7 + 300 + 3  # the step that wrote the ":" of "\nQ:"
    assert max(widths) <= 8
    # a finished row (here: after an EOS, then padding) is not decoded again
    done = torch.cat([ids[:, :20], torch.tensor([[tok.eos_token_id] + [tok.pad_token_id] * 50])], dim=1)
    crit, n_decodes = _StopOnStrings(Counting(), prompt_len=7, stops=["\nQ:"], eos_ids=[tok.eos_token_id]), len(widths)
    assert all(crit(done[:, :n], None)[0] for n in range(21, done.shape[1] + 1)) and len(widths) == n_decodes


def test_fewshot_stage_on_a_generic_dataset_with_its_own_prompt_file(ray_local, tmp_path, tiny_lm):
    """A generic dataset's `prompt_file` is the few-shot prompt the teacher gets (ByT5: one token per
    byte, so tokens_in counts the exemplars), its exemplars are held out, and the dataset shows as
    its name, not its YAML file, in the stats, run.json and every row."""
    from test_teacher_prompts import TICKETS_PROMPT, _generic

    from sbs.datasets import get_dataset
    from sbs.teacher.prompts import Renderer, load_prompt

    path = _generic(tmp_path, TICKETS_PROMPT)
    out = tmp_path / "o"
    stats = execute(load_config(TeacherConfig, None, [
        f"out={out}", f"dataset={path}", "backend=hf", f"hf.model={tiny_lm}", "prompt.mode=fewshot",
        "sampling.max_tokens=4", "batch_size=4", "progress=false"]))
    ds = get_dataset(path)
    renderer = Renderer(load_prompt(ds), "fewshot")
    asked = [e for e in ds.load("train") if e.id not in renderer.exemplar_ids]
    assert stats["exemplar_ids"] == stats["exemplar_ids_in_input"] == ["t0", "t1"] and len(asked) == 4
    assert stats["tokens_in"] == sum(len(renderer.completion(e.input).encode()) for e in asked)
    assert stats["dataset"] == "tickets" and json.loads((out / "run.json").read_text())["dataset"] == "tickets"
    rows = pq.read_table(out / "accepted").to_pylist() + pq.read_table(out / "rejects").to_pylist()
    assert sorted(r["id"] for r in rows) == [f"t{i}" for i in range(6)] and {r["dataset"] for r in rows} == {"tickets"}
    assert {r["id"] for r in rows if r.get("reason") == "exemplar"} == {"t0", "t1"}


def test_shared_prefix_cache_gives_the_plain_outputs(tmp_path):
    """`hf.prefix_cache`: the few-shot beginning every prompt shares is run once per actor and each
    batch starts from its keys and values (shifted per row under left padding). On a Gemma 3 model
    whose sliding window (8) is far shorter than that prefix, texts and token counts equal plain
    generation's, batch after batch; a batch that shares less shrinks the cached prefix."""
    import pyarrow as pa
    import torch
    from transformers import ByT5Tokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    tok = ByT5Tokenizer()
    cfg = Gemma3TextConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention"] * 3 + ["full_attention"], bos_token_id=None,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Gemma3ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    shots = "Q: 2 + 3?\nA: 5. So the answer is 5.\n\nQ: 7 - 4?\nA: 3. So the answer is 3.\n\n"
    batches = [[shots + "Q: 1 + 1?\nA:", shots + "Q: 10 - 6 + 2?\nA:", shots + "Q: 9?\nA:"],
               [shots + "Q: 4 * 4 - 1?\nA:", shots[:40] + "Q: a different tail\nA:"]]
    out = {}
    for on in (False, True):
        gen = _generator(str(tmp_path), "sampling.max_tokens=12", "sampling.stop=[]", f"hf.prefix_cache={on}")
        assert (gen.prefix is not None) == on
        out[on] = []
        for b in batches:
            rows = [{"id": f"q{i}", "sample": 0, "prompt": p, "messages": ""} for i, p in enumerate(b)]
            out[on] += gen(pa.Table.from_pylist(rows)).to_pylist()
            if on:
                shared = len(tok(b[0], add_special_tokens=False)["input_ids"])
                assert 16 <= len(gen.prefix.ids) < shared  # a real prefix, shorter than any prompt
        if on:
            assert len(gen.prefix.ids) == 40  # the second batch shares only shots[:40] (one byte a token)
    assert [(r["text"], r["tokens_in"], r["tokens_out"]) for r in out[True]] == \
        [(r["text"], r["tokens_in"], r["tokens_out"]) for r in out[False]]
    assert all(r["error"] is None and r["tokens_out"] == 12 for r in out[True])
