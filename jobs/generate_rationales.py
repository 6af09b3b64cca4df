"""Teacher stage as a Ray job: the same code as `sbs rationales`, run on a cluster.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/generate_rationales.py --config configs/teacher/svamp.yaml out=/mnt/shared/teacher/svamp

`out` must be on storage the driver can write and read again (a rerun resumes from it). Any
`key=value` after the config overrides it (see configs/teacher/base.yaml for every field).
"""
import argparse
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this file from the repo copy; make `sbs` importable there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbs.teacher.cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="generate_rationales")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
