"""`hf`: transformers `generate`, batched, in a Ray Data actor pool (one model per actor).

Loads any causal LM directory (save_pretrained layout, e.g. the converted Gemma dir) or hub name.
Each actor owns `num_cpus_per_actor` torch threads (oversubscribed threads were measured ~80x
slower on 2 cores) and, with `num_gpus_per_actor > 0`, its GPU. Stop strings are checked on the
last few decoded tokens each step, so a row stops as soon as it starts the next exemplar.

Few-shot prompts share their beginning (the exemplars: ~730 of SVAMP's ~830 prompt tokens), and
on a CPU prefilling it was about half of a batch's cost (Gemma 3 270M, 8 SVAMP prompts, 64 new
tokens: 23.7 of 51.0 s; benchmarks/teacher_prefix_cache.py). With `hf.prefix_cache` (default) each actor runs
that shared beginning through the model once, keeps its keys and values, and starts every batch
from them (`_SharedPrefix`): the batch is still the plain left-padded batch, so the outputs are
those of plain `generate`.

Sampling (temperature > 0) draws each row's tokens from its own generator seeded `seed + sample`
(the backend contract), so a row's text does not depend on its batch neighbours, the batch size,
shard boundaries or a resume; greedy decoding needs no seed.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, ClassVar

import pyarrow as pa

from sbs.teacher.backends.base import Result, TeacherBackend, map_with_actor_pool, resolve_chat, with_outputs


class _StopOnStrings:
    """Per-row stopping criterion: True once a row's new text contains a stop string.

    Each step decodes only the end of each unfinished row (decoding whole continuations every
    step is quadratic in their length): the newest token and at least `longest` characters
    before it, where a stop string that has just appeared must lie. Rows already finished (a stop
    string, an EOS) are not decoded again. The text is cut on the whole decode afterwards, so the
    outputs never depend on this window."""

    def __init__(self, tok: Any, prompt_len: int, stops: list[str], eos_ids: list[int]):
        self.tok, self.prompt_len, self.stops, self.eos = tok, prompt_len, stops, set(eos_ids)
        # +1: the window's first character may be dropped (a leading space, a partial UTF-8 byte)
        self.longest = max(len(s) for s in stops) + 1
        self.finished: set[int] = set()

    def _tail(self, ids) -> str:
        n = self.longest + 1
        while True:  # widen until the tokens before the newest decode to enough characters
            start = max(self.prompt_len, len(ids) - 1 - n)
            if start == self.prompt_len or len(self.tok.decode(ids[start:-1], skip_special_tokens=True)) > self.longest:
                return self.tok.decode(ids[start:], skip_special_tokens=True)
            n *= 2

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        for i, ids in enumerate(input_ids):
            if i not in self.finished and int(ids[-1]) not in self.eos:
                tail = self._tail(ids)
                if not any(s in tail for s in self.stops):
                    continue
            self.finished.add(i)
        return torch.tensor([i in self.finished for i in range(len(input_ids))], dtype=torch.bool,
                            device=input_ids.device)


class _SampleEachRow:
    """Logits processor for sampling with one generator per row: it samples every row's next token
    (temperature, then top_p) and leaves only that token finite, for greedy `generate` to take.
    `generate(do_sample=True)` draws from one global RNG, in batch order, so a row's sample would
    depend on which rows share its batch."""

    def __init__(self, generators: list[Any], temperature: float, top_p: float):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = generators
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

    def __call__(self, input_ids, scores):
        import torch

        for w in self.warpers:
            scores = w(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        return torch.full_like(scores, float("-inf")).scatter_(1, picks[:, None], 0.0)


class _SharedPrefix:
    """The keys and values of the prompts' common first tokens, computed once per actor.

    A batch is left-padded as plain `generate` pads it: row i (of length n_i, the longest n) has
    p_i = n - n_i pads, then its tokens. The first P positions are served from this cache, where P
    is the length of the prefix every row shares: row i's cached positions are its p_i pads then
    the prefix's first P - p_i tokens, at the position ids plain generation gives them (counted from
    the row's first real token), so each row's keys and values are the prefix's own, shifted right.
    Positions P.. (the prefix's last p_i tokens and the row's own) run as usual. Sliding-window
    layers get the same cache through their own `update` (it keeps their window), so the batch
    continues exactly as a plain left-padded one (up to float rounding of other matrix shapes).

    The cached prefix is the longest one the rows seen so far share: it only shrinks (a batch that
    shares less truncates it), and a batch sharing fewer than `min_tokens` with it starts afresh."""

    min_tokens = 16

    def __init__(self, model: Any):
        self.model, self.ids, self.kv = model, [], []

    @staticmethod
    def _common(a: list[int], b: list[int]) -> int:
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    def prefix_len(self, rows: list[list[int]]) -> int:
        """Tokens of the cache this batch can use (0: none); computes a new prefix when it must."""
        import torch

        limit = min(len(r) for r in rows) - 1  # every row keeps at least one token to run
        if self.ids:
            shared = min(self._common(self.ids, r) for r in rows)
            if min(shared, limit) >= self.min_tokens:
                self.ids, self.kv = self.ids[:shared], [(k[:, :, :shared], v[:, :, :shared]) for k, v in self.kv]
                return min(shared, limit)
        p = min(min(self._common(rows[0], r) for r in rows), limit)
        if p < self.min_tokens:
            return 0
        from transformers import DynamicCache

        cache = DynamicCache()  # full-length layers, sliding ones included: any later shift needs them all
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([rows[0][:p]], device=self.model.device), use_cache=True, cache=cache)
        self.ids, self.kv = rows[0][:p], [(layer.keys, layer.values) for layer in cache.layers]
        return p

    def batch_cache(self, p: int, pads: list[int]):
        """The cache of the batch's first `p` positions, row i shifted right by its `pads[i]`."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if len(cache.layers) != len(self.kv):
            raise RuntimeError(f"{len(cache.layers)} cache layers for {len(self.kv)} computed")
        for layer, (k, v) in zip(cache.layers, self.kv):
            kb = k.new_zeros((len(pads), *k.shape[1:2], p, k.shape[-1]))
            vb = v.new_zeros((len(pads), *v.shape[1:2], p, v.shape[-1]))
            for i, pad in enumerate(pads):
                if pad < p:  # a row padded past p has only pads there
                    kb[i, :, pad:] = k[0, :, :p - pad]
                    vb[i, :, pad:] = v[0, :, :p - pad]
            layer.update(kb, vb)
        return cache

    @staticmethod
    def supports(model: Any) -> bool:
        """Plain self-attention caches only (no KV sharing across layers, no recurrent state)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            layers = DynamicCache(config=model.config).layers
        except Exception:
            return False
        return bool(layers) and all(isinstance(x, DynamicLayer) for x in layers)


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
        self.prefix = _SharedPrefix(self.model) if h.prefix_cache and _SharedPrefix.supports(self.model) else None

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
        cached = {}
        if self.prefix is not None:
            mask = enc["attention_mask"].tolist()
            pads = [m.count(0) for m in mask]
            p = self.prefix.prefix_len([ids[pad:] for ids, pad in zip(enc["input_ids"].tolist(), pads)])
            if p:
                cached = {"cache": self.prefix.batch_cache(p, pads)}
        sample = [_SampleEachRow([torch.Generator(self.device).manual_seed(s.seed + int(r["sample"])) for r in rows],
                                 s.temperature, s.top_p)] if s.temperature > 0 else []
        eos = self.model.generation_config.eos_token_id
        stop = [_StopOnStrings(self.tok, plen, s.stop, [eos] if isinstance(eos, int) else list(eos or []))] \
            if s.stop else []
        with torch.inference_mode():
            out = self.model.generate(**enc, **cached, max_new_tokens=s.max_tokens, pad_token_id=self.tok.pad_token_id,
                                      do_sample=False, logits_processor=sample, stopping_criteria=stop)
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
            res: list[Result] = list(self._generate(rows))
        except Exception as batch_error:  # one bad row must not fail its neighbours: retry one by one
            # said, not silent: rows one at a time cost several times a batch
            logging.getLogger(__name__).warning("hf: a batch of %d rows failed (%s: %s); generating them one by one",
                                                len(rows), type(batch_error).__name__, str(batch_error)[:300])
            res = []
            for r in rows:
                try:
                    res += self._generate([r])
                except Exception as e:
                    res.append(f"hf generate failed: {type(e).__name__}: {e}"[:2000])
        return with_outputs(batch, res)


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
