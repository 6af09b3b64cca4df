#!/usr/bin/env bash
# Run the sbs pipeline on a Ray cluster: one `ray job submit` per stage, in order, each waited for
# (its logs stream here); the first failing stage stops the script with that stage's exit code.
#
#   generate rationales -> train the student -> evaluate it [-> serve it]
#
# Usage (from anywhere; the repository root is uploaded as each job's working dir):
#   export RAY_ADDRESS=http://127.0.0.1:8265          # the cluster's dashboard (ray dashboard / port-forward)
#   scripts/run_pipeline.sh --profile cluster           # configs/cluster/*: e-SNLI, vLLM teacher, T5-XXL, serve
#   scripts/run_pipeline.sh --teacher configs/teacher/svamp.yaml --teacher-arg out=/mnt/cluster_storage/t \
#       --train configs/student/svamp_multitask.yaml --train-arg data.rationales=/mnt/cluster_storage/t \
#       --train-arg run.export_dir=/mnt/cluster_storage/s --eval /mnt/cluster_storage/s --eval-arg --split=test
# Stages and their arguments:
#   --teacher CFG   jobs/generate_rationales.py --config CFG [key=value ...]
#   --train CFG     jobs/train_student.py --config CFG [key=value ...]
#   --eval EXPORT   jobs/evaluate_student.py EXPORT [--split ... --out ...]
#   --serve CFG     jobs/serve_student.py --config CFG --detach [key=value ...]  (deploys, then returns)
#   --teacher-arg / --train-arg / --eval-arg / --serve-arg ARG   one more argument for that stage (repeatable)
# Options:
#   --profile cluster         the shipped cluster stages (configs/cluster/*), with --placement
#   --placement / --no-placement   ask for the custom resources of cluster/*.yaml so each driver lands on
#                             its node type: {"teacher": 1} for rationales, {"trainer": 1} for train and eval
#   --only STAGE[,STAGE]      run only these stages (rationales, train, eval, serve)
#   --working-dir DIR|URI     each job's working_dir (default: the repository root, uploaded per job).
#                             local:///abs/path: every node already has this checkout at that path (one
#                             machine's multi-node cluster, a container image): used in place, nothing
#                             uploaded or unpacked (docs/cluster.md says why a one-machine cluster needs it)
#   --dry-run                 print the commands instead of submitting
# Environment: RAY_ADDRESS (required), RAY (the ray executable, default `ray`), RAY_AUTH_MODE /
#   RAY_AUTH_TOKEN when the cluster uses token auth (docs/cluster.md).
# Hardware: any Ray cluster; --profile cluster needs the node types of cluster/*.yaml (docs/cluster.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-ray}"
STAGES=(rationales train eval serve)
declare -A JOB=([rationales]=jobs/generate_rationales.py [train]=jobs/train_student.py
                [eval]=jobs/evaluate_student.py [serve]=jobs/serve_student.py)
declare -A MAIN=()                                 # stage -> its config (or export dir for eval)
declare -a ARGS_rationales=() ARGS_train=() ARGS_eval=() ARGS_serve=()
placement="" only="" dry_run=0 working_dir=.

die() { echo "run_pipeline: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

# Where each stage's driver goes when placement is on (the custom resources of cluster/*.yaml).
placement_flags() {
  case "$1" in
    rationales) echo '--entrypoint-resources' '{"teacher":1}' ;;
    train) echo '--entrypoint-resources' '{"trainer":1}' ;;
    eval) echo '--entrypoint-resources' '{"trainer":1}' '--entrypoint-num-cpus' '8' '--entrypoint-num-gpus' '1' ;;
  esac
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) need "$@"; [[ "$2" == cluster ]] || die "--profile: unknown '$2' (choose: cluster)"
      MAIN[rationales]=configs/cluster/teacher-esnli-vllm.yaml
      MAIN[train]=configs/cluster/train-esnli-t5-xxl.yaml
      MAIN[eval]=/mnt/cluster_storage/sbs/students/esnli-t5-xxl
      ARGS_eval+=(--split test --out /mnt/cluster_storage/sbs/eval/esnli-t5-xxl-test.json --device cuda --dtype bfloat16)
      MAIN[serve]=configs/cluster/serve-esnli-sbs.yaml
      placement="${placement:-1}"; shift 2 ;;
    --teacher) need "$@"; MAIN[rationales]="$2"; shift 2 ;;
    --train|--eval|--serve) need "$@"; MAIN[${1#--}]="$2"; shift 2 ;;
    --teacher-arg) need "$@"; ARGS_rationales+=("$2"); shift 2 ;;
    --train-arg) need "$@"; ARGS_train+=("$2"); shift 2 ;;
    --eval-arg) need "$@"; ARGS_eval+=("$2"); shift 2 ;;
    --serve-arg) need "$@"; ARGS_serve+=("$2"); shift 2 ;;
    --placement) placement=1; shift ;;
    --no-placement) placement=0; shift ;;
    --only) need "$@"; only=",$2,"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --working-dir) need "$@"; working_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n "${RAY_ADDRESS:-}" ]] || die "set RAY_ADDRESS to the cluster's dashboard, e.g. http://127.0.0.1:8265"
if [[ -n "$only" ]]; then
  for s in ${only//,/ }; do [[ -n "${JOB[$s]:-}" ]] || die "--only: unknown stage '$s'"; done
fi

cd "$ROOT"
if [[ "$working_dir" == local://* ]]; then
  [[ -d "${working_dir#local://}" ]] || die "--working-dir: ${working_dir#local://} is not a directory here"
fi
# Check every selected stage before submitting the first: a typo must not surface hours later.
selected=()
for stage in "${STAGES[@]}"; do
  [[ -z "$only" || "$only" == *",$stage,"* ]] || continue
  [[ -n "${MAIN[$stage]:-}" ]] || continue
  [[ -f "${JOB[$stage]}" ]] || die "$stage: entry point ${JOB[$stage]} not found"
  if [[ "$stage" != eval ]]; then [[ -f "${MAIN[$stage]}" ]] || die "$stage: config ${MAIN[$stage]} not found"; fi
  selected+=("$stage")
done
[[ ${#selected[@]} -gt 0 ]] || die "no stage to run: give --teacher/--train/--eval/--serve or --profile"

for stage in "${selected[@]}"; do
  declare -n extra="ARGS_$stage"
  cmd=("$RAY" job submit --address "$RAY_ADDRESS" --working-dir "$working_dir"
       --submission-id "sbs-$stage-$(date -u +%Y%m%d-%H%M%S)-$$")
  if [[ "$placement" == 1 ]]; then
    read -r -a flags <<< "$(placement_flags "$stage")"
    cmd+=("${flags[@]}")
  fi
  if [[ "$stage" == eval ]]; then
    cmd+=(-- python "${JOB[$stage]}" "${MAIN[$stage]}" "${extra[@]}")
  elif [[ "$stage" == serve ]]; then  # --detach: the job returns once /healthz answers; the app stays up
    cmd+=(-- python "${JOB[$stage]}" --config "${MAIN[$stage]}" --detach "${extra[@]}")
  else
    cmd+=(-- python "${JOB[$stage]}" --config "${MAIN[$stage]}" "${extra[@]}")
  fi
  unset -n extra
  # Shell-quoted, so the printed line can be pasted as is (e.g. from --dry-run).
  echo "== run_pipeline: $stage: $(printf '%q ' "${cmd[@]}")" >&2
  [[ $dry_run == 1 ]] && continue  # (dry run: commands only)
  # Without --no-wait, `ray job submit` follows the job and exits non-zero when it fails.
  rc=0; "${cmd[@]}" || rc=$?
  if [[ $rc != 0 ]]; then
    echo "== run_pipeline: stage '$stage' failed (exit $rc); later stages not started" >&2
    exit "$rc"
  fi
done
echo "== run_pipeline: ${#selected[@]} stage(s) done: ${selected[*]}" >&2
