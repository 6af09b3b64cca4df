"""Build DeepSpeed's C++ ops for this machine's accelerator ahead of the first run that needs them.

DeepSpeed JIT-compiles its ops on first use into TORCH_EXTENSIONS_DIR: on CPU the shared-memory
all-reduce that every DeepSpeed process group loads (about 45 s on 2 cores) and the CPU Adam that
`train.offload` steps with (about 75 s). Built here once, e.g. by `make test` while the vLLM
environment installs, a training run finds them cached instead of stalling its workers.

The build runs `ninja` from PATH, and a cache written by one ninja is rebuilt by another (a
system 1.11 and the venv's 1.13 hash their commands differently: a 2-step run that found the
other's cache recompiled the shared-memory op for 60 s on both cores). `use_own_ninja()` puts the
ninja installed beside this interpreter (the `ninja` wheel DeepSpeed depends on) first on PATH:
the builder here and every training worker call it, so whatever PATH a driver was started with,
one ninja writes and reads the cache.

    python -m sbs.student.ds_ops [BUILDER ...]   # the ops this accelerator's DeepSpeed runs JIT-build (or those named)
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# DeepSpeed's builder class names (`accelerator.create_op_builder`), per accelerator.
OPS = {"cpu": ("ShareMemCommBuilder", "CPUAdamBuilder")}


def use_own_ninja() -> None:
    """Put this interpreter's bin dir (where its `ninja` is) first on PATH, once."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if (Path(bin_dir) / "ninja").is_file() and path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + path


def build(ops: tuple[str, ...] | None = None) -> dict[str, float]:
    """Load (building when missing) each op; seconds per op."""
    from deepspeed.accelerator import get_accelerator

    use_own_ninja()

    acc = get_accelerator()
    names = OPS.get(acc.device_name(), ()) if ops is None else ops
    took = {}
    for name in names:
        builder = acc.create_op_builder(name)
        if builder is None:
            raise RuntimeError(f"DeepSpeed's {acc.device_name()} accelerator has no op builder {name!r}")
        t0 = time.perf_counter()
        builder.load(verbose=False)
        took[name] = round(time.perf_counter() - t0, 1)
    return took


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = __doc__.strip().splitlines()[-1].strip()
    if any(a.startswith("-") for a in argv):
        print(usage, file=sys.stderr)
        return 2
    known = {n for names in OPS.values() for n in names}
    unknown = [a for a in argv if a not in known]
    if unknown:
        print(f"unknown builder(s) {', '.join(unknown)}: choose from {', '.join(sorted(known))}\n{usage}",
              file=sys.stderr)
        return 2
    took = build(tuple(argv) or None)
    print("DeepSpeed ops ready: " + (", ".join(f"{k} {v} s" for k, v in took.items()) or "none to build"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
