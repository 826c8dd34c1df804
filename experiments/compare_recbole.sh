#!/usr/bin/env bash
# Side by side with RecBole 1.2.1 on ml-100k (issue 7, item 5). Not part of CI; RecBole and
# torch are not dependencies of causalrec_jax: this script makes their own environment.
#
#   bash experiments/compare_recbole.sh [--data DIR] [--epochs N] [--models sasrec,bpr,lightgcn]
#                                       [--out DIR] [--reuse MODEL=RUN_DIR ...] [--skip-ours]
#
#   --data    RecBole atomic files NAME.inter/.user/.item (default ../shared/data/ml-100k);
#             read in place through symlinks, nothing is downloaded
#   --epochs  cap on RecBole's epochs (default: RecBole's early stopping, stopping_step 10);
#             a capped row says "capped at N epochs (not converged)"
#   --models  which of sasrec (vs configs/ml100k_sasrec.toml), bpr (vs configs/ml100k_mf.toml),
#             lightgcn (vs configs/ml100k_lightgcn.toml)
#   --out     where the rows, table.md and results.json go
#             (default experiments/results/compare_recbole)
#   --reuse   read an existing `causalrec train` run folder for MODEL instead of training ours
#   --skip-ours  run only RecBole (rows already in --out are kept and tabled)
#
# Environment: RECBOLE_VENV (default .venv-recbole) is created if missing with torch==2.13.0
# (a CPU build; set TORCH_INDEX_URL to PyTorch's CPU index where pip does not find one), then
# recbole==1.2.1 with numpy<2, setuptools<81, scipy<1.12 (LightGCN) and pandas<3 (RecBole's
# in-place pandas calls do nothing under pandas 3's copy-on-write). PROJECT_PYTHON (default
# .venv/bin/python) runs ours. RECBOLE_WORK: RecBole's scratch folder (default a temp dir).
# COMPARE_NOTE: a line for the table header on how the run was made (e.g. machine load).
# Each model runs in its own process, one after another, so timings and peak memory are its own.
# Writes OUT/recbole_MODEL.json, OUT/ours_MODEL.json, OUT/table.md and OUT/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

data=../shared/data/ml-100k
epochs=""
models=sasrec,bpr,lightgcn
out=experiments/results/compare_recbole
skip_ours=0
declare -A reuse=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --reuse) reuse["${2%%=*}"]="${2#*=}"; shift 2 ;;
    --skip-ours) skip_ours=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "compare_recbole.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

venv="${RECBOLE_VENV:-.venv-recbole}"
project_python="${PROJECT_PYTHON:-.venv/bin/python}"
work="${RECBOLE_WORK:-$(mktemp -d -t compare_recbole.XXXXXX)}"
mkdir -p "$work"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import recbole, torch" 2>/dev/null; then
  "$venv/bin/pip" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
  "$venv/bin/pip" install "recbole==1.2.1" "numpy<2" "setuptools<81" "scipy<1.12" "pandas<3"
fi
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1  # RecBole 1.2.1 reloads its checkpoint; torch >= 2.6

for model in ${models//,/ }; do
  rm -f "$out/recbole_$model.json"
  "$venv/bin/python" experiments/compare_recbole.py recbole --model "$model" --data "$data" \
    ${epochs:+--epochs "$epochs"} --out "$out" --work "$work/$model" 2>&1 \
    | tee "$work/recbole_$model.log" | grep --line-buffered -E "^recbole|^wrote|Error|error" || true
  [[ -f "$out/recbole_$model.json" ]] || { echo "RecBole $model failed: $work/recbole_$model.log" >&2; exit 1; }
done

if [[ $skip_ours -eq 0 ]]; then
  for model in ${models//,/ }; do
    "$project_python" experiments/compare_recbole.py ours --model "$model" --data "$data" \
      --out "$out" ${reuse[$model]:+--reuse "${reuse[$model]}"}
  done
fi

"$project_python" experiments/compare_recbole.py table --out "$out" ${COMPARE_NOTE:+--note "$COMPARE_NOTE"}
echo "RecBole logs and checkpoints: $work"
