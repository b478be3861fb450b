#!/usr/bin/env bash
# GPU readiness in one run (<= 8 minutes on one GPU), one results file:
#   1. the quick demo on CUDA            nnUNetv2_rndpo_demo --quick --device cuda
#   2. step cost, memory and proposals   benchmarks/performance.py --device cuda (nnU-Net's AMP and GradScaler,
#                                        nnUNet_n_proc_DA workers with pinned memory), 3d_fullres
#   3. the e2e trainer test on CUDA      pytest -m e2e tests/test_e2e_trainer.py -k cuda
#
# Usage (from the repository root):
#   benchmarks/gpu_check.sh [RESULTS_DIR]      RESULTS_DIR defaults to $OUT if set, else /tmp/rndpo_gpu_check
# Writes RESULTS_DIR/gpu_check.txt (and the stages' logs in RESULTS_DIR/logs/); the demo's and the benchmark's
# nnU-Net folders go to WORK_DIR (default: a new folder in /tmp), so that RESULTS_DIR stays small.
#
# Environment:
#   DEVICE=cuda|cpu   cpu is a dry run of the same stages on the CPU (slow: a check of the script, not a figure)
#   PYTHON            the interpreter with nnunetv2_rndpo installed (default: python3)
#   SOURCE            MSD Hippocampus for the benchmark (default ../shared/data/msd_task04_hippocampus);
#                     missing = the benchmark stage is reported as skipped
#   PERF_DIR          the benchmark's output folder (default WORK_DIR/perf); a prepared one is reused
#   STAGES            the stages to run (default "demo benchmark e2e")
#   BUDGET_S          seconds for all stages together (default 480); each stage gets what is left
set -uo pipefail

DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
RESULTS_DIR=${1:-${OUT:-/tmp/rndpo_gpu_check}}
WORK_DIR=${WORK_DIR:-$(mktemp -d /tmp/rndpo_gpu_check.XXXXXX)}
SOURCE=${SOURCE:-../shared/data/msd_task04_hippocampus}
PERF_DIR=${PERF_DIR:-$WORK_DIR/perf}
STAGES=${STAGES:-demo benchmark e2e}
BUDGET_S=${BUDGET_S:-480}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_FILE=$RESULTS_DIR/gpu_check.txt
START=$(date +%s)

case $DEVICE in cuda|cpu) ;; *) echo "DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
mkdir -p "$RESULTS_DIR/logs" "$WORK_DIR" || exit 2
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" nnUNet_compile=${nnUNet_compile:-f} OMP_WAIT_POLICY=PASSIVE
if [[ $DEVICE == cuda ]]; then
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-8}  # as nnU-Net on a GPU: augmentation workers, pinned memory
else
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-0} nnUNet_def_n_proc=${nnUNet_def_n_proc:-1}
fi

say() { echo "$*" | tee -a "$RESULTS_FILE"; }
seconds_left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# run_stage NAME COMMAND...: runs COMMAND with the time that is left, logs it, appends its status
run_stage() {
  local name=$1 left status begin took
  shift
  left=$(seconds_left)
  if ((left < 30)); then
    say "## $name: NOT RUN (budget of ${BUDGET_S} s spent)"
    return 1
  fi
  begin=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$left" "$@" >"$RESULTS_DIR/logs/$name.log" 2>&1
  status=$?
  took=$(($(date +%s) - begin))
  if ((status == 0)); then
    say "## $name: OK in ${took} s"
  elif ((status == 124 || status == 137)); then
    say "## $name: TIMED OUT after ${took} s (budget left was ${left} s)"
  else
    say "## $name: FAILED (exit $status) after ${took} s; the end of logs/$name.log:"
    tail -n 30 "$RESULTS_DIR/logs/$name.log" | sed 's/^/    /' | tee -a "$RESULTS_FILE"
  fi
  return "$status"
}

: >"$RESULTS_FILE"
say "# nnunetv2-rndpo GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), DEVICE=$DEVICE)"
say "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$RESULTS_FILE"
import os, torch, nnunetv2
from importlib.metadata import version
print(f"torch {torch.__version__}, nnunetv2 {version('nnunetv2')}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
print(f"CPU cores: {os.cpu_count()}, load average: {os.getloadavg()}, nnUNet_n_proc_DA={os.environ['nnUNet_n_proc_DA']}")
EOF
if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  say "no CUDA device visible to torch: nothing measured (DEVICE=cpu runs the dry run)"
  exit 1
fi
BIN=$("$PYTHON" -c "import sys, pathlib; print(pathlib.Path(sys.executable).parent)")
failed=0

for stage in $STAGES; do
  case $stage in
    demo)
      if run_stage demo "$BIN/nnUNetv2_rndpo_demo" -o "$WORK_DIR/demo" --quick --device "$DEVICE"; then
        say "report: $WORK_DIR/demo/report.md; its tables:"
        grep '^|' "$WORK_DIR/demo/report.md" | tee -a "$RESULTS_FILE"
      else failed=1; fi ;;
    benchmark)
      if [[ ! -d $SOURCE/imagesTr ]]; then
        say "## benchmark: SKIPPED (no MSD Hippocampus at SOURCE=$SOURCE)"
        continue
      fi
      # one repeat, 3d_fullres only, small pools: what fits the budget; the full tables need the default flags
      if run_stage benchmark "$PYTHON" benchmarks/performance.py --source "$SOURCE" -o "$PERF_DIR" --device "$DEVICE" \
          --configurations 3d_fullres --repeats 1 --iterations 10 --warmup 3 --pool-sizes 20 40 --proposal-cases 5; then
        tee -a "$RESULTS_FILE" <"$PERF_DIR/performance.txt"
      else failed=1; fi ;;
    e2e)
      if [[ $DEVICE == cuda ]]; then
        run_stage e2e "$PYTHON" -m pytest -m e2e tests/test_e2e_trainer.py -k cuda -q -rs -p no:cacheprovider || failed=1
      else  # the CUDA test skips on the CPU; the same fixture and the CPU run of the RN-DPO trainer instead
        run_stage e2e "$PYTHON" -m pytest -m e2e tests/test_e2e_trainer.py -k "cuda or (train_predict_evaluate and RNDPO)" \
          -q -rs -p no:cacheprovider || failed=1
      fi
      if [[ -f $RESULTS_DIR/logs/e2e.log ]]; then tail -n 3 "$RESULTS_DIR/logs/e2e.log" | tee -a "$RESULTS_FILE"; fi ;;
    *) say "## $stage: unknown stage (known: demo benchmark e2e)"; failed=1 ;;
  esac
done

say "total: $(($(date +%s) - START)) s of a ${BUDGET_S} s budget; work folder $WORK_DIR"
exit "$failed"
