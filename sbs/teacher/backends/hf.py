"""`hf`: transformers `generate`, batched, in a Ray Data actor pool (one model per actor).

Loads any causal LM directory (save_pretrained layout, e.g. the converted Gemma dir) or hub name.
Each actor owns `num_cpus_per_actor` torch threads (oversubscribed threads were measured ~80x
slower on 2 cores) and, with `num_gpus_per_actor > 0`, its GPU. Stop strings are checked on the
decoded continuation each step, so a row stops as soon as it starts the next exemplar.
"""
from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import pyarrow as pa

from sbs.teacher.backends.base import TeacherBackend, map_with_actor_pool, resolve_chat


class _StopOnStrings:
    """Per-row stopping criterion: True once a row's new text contains a stop string."""

    def __init__(self, tok: Any, prompt_len: int, stops: list[str]):
        self.tok, self.prompt_len, self.stops = tok, prompt_len, stops

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = self.tok.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in new], device=input_ids.device)


class HfGenerator:
    """The actor: holds one model; `__call__` generates for a batch of rows."""

    def __init__(self, cfg_json: str, chat: bool):
        from sbs.teacher.config import TeacherConfig

        cfg = TeacherConfig.model_validate_json(cfg_json)
        threads = max(1, int(cfg.num_cpus_per_actor))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.cfg, self.chat, self.torch = cfg, chat, torch
        h = cfg.hf
        self.device = ("cuda" if torch.cuda.is_available() and cfg.num_gpus_per_actor > 0 else "cpu") \
            if h.device == "auto" else h.device
        dtype = {"auto": torch.bfloat16 if self.device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[h.dtype]
        self.tok = AutoTokenizer.from_pretrained(h.model)
        # Decoder-only: pad on the left so every row continues its prompt; truncate on the left so
        # an over-long few-shot prompt loses its oldest exemplar, never the query.
        self.tok.padding_side = self.tok.truncation_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        # Special tokens: a chat template writes its own (<bos> ...); tokenizers that append an EOS
        # (T5-style) must not end the prompt with one, or the model reads "text over".
        probe = self.tok("a")["input_ids"]
        self.add_special = not chat and not (probe and probe[-1] == self.tok.eos_token_id)
        self.model = AutoModelForCausalLM.from_pretrained(h.model, dtype=dtype).to(self.device).eval()

    def _text(self, row: dict[str, Any]) -> str:
        if self.chat:
            return self.tok.apply_chat_template(json.loads(row["messages"]), tokenize=False,
                                                add_generation_prompt=True)
        return row["prompt"]

    def _generate(self, rows: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
        torch, s = self.torch, self.cfg.sampling
        enc = self.tok([self._text(r) for r in rows], return_tensors="pt", padding=True, truncation=True,
                       max_length=self.cfg.hf.max_input_tokens, add_special_tokens=self.add_special).to(self.device)
        plen = enc["input_ids"].shape[1]
        torch.manual_seed(s.seed + sum(int(r["sample"]) for r in rows) + len(rows[0]["id"]))
        kw: dict[str, Any] = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p} \
            if s.temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=s.max_tokens, pad_token_id=self.tok.pad_token_id,
                                      stopping_criteria=[_StopOnStrings(self.tok, plen, s.stop or [])], **kw)
        res = []
        for i in range(len(rows)):
            gen = out[i, plen:]
            n_out = int((gen != self.tok.pad_token_id).sum()) if self.tok.pad_token_id is not None else len(gen)
            text = self.tok.decode(gen, skip_special_tokens=True)
            for stop in s.stop or []:
                j = text.find(stop)
                text = text[:j] if j >= 0 else text
            res.append((text, int(enc["attention_mask"][i].sum()), n_out))
        return res

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        try:
            res: list[tuple[str, int, int] | str] = list(self._generate(rows))
        except Exception:  # one bad row must not fail its neighbours: retry one by one
            res = []
            for r in rows:
                try:
                    res += self._generate([r])
                except Exception as e:
                    res.append(f"hf generate failed: {type(e).__name__}: {e}"[:2000])
        text = [x[0] if isinstance(x, tuple) else "" for x in res]
        err = [None if isinstance(x, tuple) else x for x in res]
        tin = [x[1] if isinstance(x, tuple) else 0 for x in res]
        tout = [x[2] if isinstance(x, tuple) else 0 for x in res]
        return (batch.append_column("text", pa.array(text, pa.string())).append_column("error", pa.array(err, pa.string()))
                .append_column("tokens_in", pa.array(tin, pa.int64())).append_column("tokens_out", pa.array(tout, pa.int64())))


class HfBackend(TeacherBackend):
    name: ClassVar[str] = "hf"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.hf.model:
            raise ValueError("hf.model: set a local model directory or hub name")
        from sbs.teacher.gemma import resolve_model  # `gemma3-270m` -> its converted copy (converts once)

        self.cfg = cfg = cfg.model_copy(update={"hf": cfg.hf.model_copy(update={"model": resolve_model(cfg.hf.model)})})
        from transformers import AutoTokenizer

        has_template = getattr(AutoTokenizer.from_pretrained(cfg.hf.model), "chat_template", None) is not None
        self.wants_chat = resolve_chat(cfg, has_template)
        if self.wants_chat and not has_template:
            raise ValueError(f"prompt.chat=true but {cfg.hf.model} has no chat template; use prompt.chat=false")

    def generate(self, ds):
        c = self.cfg
        return map_with_actor_pool(ds, HfGenerator, c, num_gpus=c.num_gpus_per_actor, fn_constructor_kwargs={
            "cfg_json": c.model_dump_json(), "chat": self.wants_chat})

    def describe(self) -> str:
        return f"hf/{os.path.basename(self.cfg.hf.model.rstrip('/')) or self.cfg.hf.model}"
