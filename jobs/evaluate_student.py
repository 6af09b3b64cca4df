"""Label-only evaluation of an exported student as a Ray job (the same code as `sbs eval`).

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/evaluate_student.py /mnt/cluster_storage/sbs/students/svamp-multitask --split test \\
        --out /mnt/cluster_storage/sbs/eval/svamp-multitask.json
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbs.student.cli import eval as evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="evaluate_student")
    evaluate.add_arguments(parser)
    sys.exit(evaluate.run(parser.parse_args()))
