"""Serving as a Ray job: deploy the students with Ray Serve on the cluster (same code as `sbs serve`).

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/serve_student.py --config configs/serve/students.yaml --detach \\
        'students=[{dataset: esnli, export_dir: /mnt/cluster_storage/sbs/runs/esnli_multitask/export}]'

`--detach` returns once /healthz answers and leaves the application running on the cluster (Serve
apps outlive the job that deployed them; `serve shutdown` or `serve delete sbs` removes it). The
HTTP proxy binds 127.0.0.1 on the head node: reach it through an SSH tunnel
(`ssh -L 8000:127.0.0.1:8000 head`), or add `--expose` to bind 0.0.0.0 deliberately.
`configs/serve/gpu.yaml` runs the replicas on GPUs in bfloat16. export_dirs must be readable by
every node (shared storage).
"""
import argparse
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this file from the repo copy; make `sbs` importable there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbs.serve.cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="serve_student")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
