#!/usr/bin/env bash
# CUDA checks and GPU benchmarks in one run, for a machine with an NVIDIA GPU and torch
# installed (run from the repository root; nothing is installed, the tree is used as is):
#
#     bash bench/cuda_checks.sh [OUTDIR]      # logs in OUTDIR (default: $OUT or out/cuda)
#
# Each step has its own time limit, writes OUTDIR/STEP.log and prints its exit code, time
# and last lines, so one failing step does not hide the others:
#   info       GPU, driver, torch and CUDA versions
#   cuda       the tests marked cuda (tests/test_cuda.py: every layer family on the GPU
#              against the CPU in float64, check_vjp, mixed precision, training steps, tiling)
#   suite      the whole test suite on this machine (its torch version, a GPU present)
#   train      the README's training run (50,000 built-in pairs, 12 epochs) on the GPU
#   nccl       one-process data-parallel training through NCCL (torchrun's variables set by
#              hand), and --nproc 2 on a machine with fewer GPUs (must be refused)
#   bench-*    training-step and inference throughput against torch.nn on the GPU, and
#              the U-Net's training step at a GPU-sized batch
#   unet-gpu   bench/train_unet.py's unet-gaussian recipe at batch 32, in bfloat16, for
#              $MINUTES whole minutes (default 3) on the GPU, photos from data/photos/train (fetch them first:
#              bench/shipped_weights.py); evaluate the weights it writes with
#              bench/photo_denoise.py --gaussian-weights OUTDIR/unet-gaussian-gpu.pth
# STEPS="info cuda" runs only those (default: all but suite and unet-gpu).
set -u
case ${1:-} in
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "usage: bash bench/cuda_checks.sh [OUTDIR] (not an option: '$1'; see --help)" >&2; exit 2 ;;
esac
case ${MINUTES:-3} in
    '' | *[!0-9]* | 0*) echo "MINUTES: expected a whole number of minutes >= 1, without leading zeros, got '$MINUTES'" >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then
    echo "usage: bash bench/cuda_checks.sh [OUTDIR] (one folder; steps go in STEPS=\"...\")" >&2
    exit 2
fi
out=${1:-${OUT:-out/cuda}}
mkdir -p -- "$out" || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export N2NFUNC_CACHE="$out/cache" PYTHONDONTWRITEBYTECODE=1
all="info cuda bench-train bench-infer bench-unet nccl train unet-gpu suite"
steps=${STEPS:-info cuda bench-train bench-infer bench-unet nccl train}
for s in $steps; do
    case " $all " in *" $s "*) ;; *) echo "unknown step '$s' (steps: $all)" >&2; exit 2 ;; esac
done
py=${PYTHON:-python3}
failed=""

run() {  # run NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    case " $steps " in *" $name "*) ;; *) return ;; esac
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || failed="$failed $name"
    echo "== $name: exit $rc after $(($(date +%s) - start)) s (limit $limit s)"
    tail -n "${TAIL:-12}" "$out/$name.log" | cut -c1-200
    grep -E "(FAILED|ERROR) tests/" "$out/$name.log" | head -n 20 | cut -c1-200  # pytest -v
}

run info 20 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm \
    --format=csv && "$1" -c "import torch; print(torch.__version__, torch.version.cuda, \
    torch.cuda.get_device_name(0))" && nproc' _ "$py"
run cuda 120 "$py" -m pytest -q -p no:cacheprovider -m cuda tests
run bench-train 150 "$py" bench/train_step.py --device cuda --rounds 5
run bench-infer 60 "$py" bench/inference.py --device cuda --rounds 5
run bench-unet 90 "$py" bench/unet_train_step.py --device cuda --crop 128 --batch 32 \
    --arch 4:32,64,48,24 --arch 5:48,96,64,32
# one NCCL process (torchrun's variables by hand), then one process more than the GPUs
# (refused: exit 2)
run nccl 60 bash -c 'RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 "$1" -m n2nfunc.cli train --device cuda \
    --n-train 2048 --n-val 256 --epochs 1 --quiet --no-pictures --out "$2/nccl" || exit 1
    more=$(("$("$1" -c "import torch; print(torch.cuda.device_count())")" + 1))
    "$1" -m n2nfunc.cli train --device cuda --nproc "$more" --out "$2/nccl2"
    rc=$?; echo "exit $rc (2 expected: --nproc $more)"; [ "$rc" = 2 ]' _ "$py" "$out"
run train 150 "$py" -m n2nfunc.cli train --device cuda --no-pictures --out "$out/train"
run unet-gpu $((${MINUTES:-3} * 60 + 60)) "$py" bench/train_unet.py --name unet-gaussian \
    --minutes "${MINUTES:-3}" --batch 32 --precision bfloat16 --device cuda \
    --photos data/photos --out "$out/unet-gaussian-gpu.pth"
xdist=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist, if there
# shellcheck disable=SC2086
run suite 240 "$py" -m pytest -v -p no:cacheprovider $xdist tests
[ -z "$failed" ] || { echo "failed:$failed"; exit 1; }
