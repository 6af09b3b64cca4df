"""Build DeepSpeed's C++ ops for this machine's accelerator ahead of the first run that needs them.

DeepSpeed JIT-compiles its ops on first use into TORCH_EXTENSIONS_DIR: on CPU the shared-memory
all-reduce that every DeepSpeed process group loads (about 45 s on 2 cores) and the CPU Adam that
`train.offload` steps with (about 75 s). Built here once (`make ds-ops`; `make test` builds them
beside its first tests), a training run finds them cached instead of stalling its workers.

The build runs `ninja` from PATH, and a cache written by one ninja is rebuilt by another (a
system 1.11 and the venv's 1.13 hash their commands differently: a 2-step run that found the
other's cache recompiled the shared-memory op for 60 s on both cores). `use_own_ninja()` puts the
ninja installed beside this interpreter (the `ninja` wheel DeepSpeed depends on) first on PATH:
the builder here and every training worker call it, so whatever PATH a driver was started with,
one ninja writes and reads the cache.

With --background the build takes only CPU nobody else wants (`lower_priority`): `make test` builds
CPU Adam that way beside the tests.

    python -m sbs.student.ds_ops [--background] [BUILDER ...]   # this accelerator's ops (or those named)
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


def lower_priority() -> None:
    """This process and what it starts (ninja, the compiler) run only on CPU that nothing else wants.

    `nice` alone does not do it on a kernel with autogroup scheduling (the default on desktop and
    many server kernels): CPU is shared fairly between sessions first, and the Ray workers of the
    tests beside the build each run in sessions of their own: beside a nice-19 build, `make test`
    ran no faster than beside a nice-0 one. So: a session (autogroup) of its own, that group at
    nice 19, and the process at nice 19 under SCHED_IDLE."""
    try:
        os.setsid()
        own_session = True
    except OSError:  # a process group leader cannot start a session
        own_session = os.getsid(0) == os.getpid()
    if own_session:  # never renice a group this process shares with others (e.g. the test run's)
        try:
            Path("/proc/self/autogroup").write_text("19")
        except OSError:  # no autogroup scheduling here: the per-process settings below suffice
            pass
    os.nice(19 - os.nice(0))
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = __doc__.strip().splitlines()[-1].strip()
    if "--background" in argv:
        argv = [a for a in argv if a != "--background"]
        lower_priority()
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
