"""Student stage as a Ray job: the same code as `sbs train`, run on a cluster.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/train_student.py --config configs/student/svamp_multitask.yaml \\
        run.storage_path=/mnt/cluster_storage/sbs/runs

`run.storage_path` must be storage every node can reach (shared disk or a URI); resubmitting
with the same run.name resumes from the latest checkpoint. Any `key=value` overrides the config
(see configs/student/base.yaml for every field).
"""
import argparse
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this file from the repo copy; make `sbs` importable there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbs.student.cli import train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="train_student")
    train.add_arguments(parser)
    sys.exit(train.run(parser.parse_args()))
