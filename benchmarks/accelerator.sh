#!/usr/bin/env bash
# The accelerator benchmark: one command, one Markdown file (benchmarks/results/accelerator.md).
#
#   bash benchmarks/accelerator.sh            # on one GPU (H100/H200 class): under 8 minutes
#   bash benchmarks/accelerator.sh --smoke    # tiny sizes on any machine (CPU: ~2 minutes)
#
# Parts (each skipped, with a note in the output, when a dependency is missing):
#   1. exact assignment at n = 512 / 2048 (jfm auto = auction on a GPU, the auction, the
#      warm-started host solve) against torchcfm OTPlanSampler("exact"), POT emd, scipy;
#      Sinkhorn plan against POT at n = 512 / 2048;
#      OT-CFM train step (MLP 4x512) against the independent coupling at batch 512 / 2048
#      (benchmarks/ot_assignment.py);
#   2. W1 train, W2 sample, W3 likelihood against flow_matching on the same device
#      (benchmarks/vs_pytorch.py, the issue sizes; needs torch with CUDA and flow_matching);
#   3. U-Net, CIFAR-10 configuration, training throughput on synthetic 32x32x3 data, one
#      device (benchmarks/train_images.py).
# Run from the repository root. OUT=path overrides the output file.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT="${OUT:-benchmarks/results/accelerator$([ $SMOKE = 1 ] && echo _smoke).md}"
TMP="$(mktemp -d)"
START=$(date +%s)

if [ $SMOKE = 1 ]; then
  OT_ARGS=(--sizes 64 128 --sinkhorn-sizes 64 --methods auto auction scipy --step-batch 64 --repeat 2)
  VS_ARGS=(--workloads W1 W2 W3 --repeat 1 --train-steps 2 --fit-steps 5 --w2-n 100 --w2-methods euler --w3-n 20)
  IMG_ARGS=(--fake-devices 0 --devices 1 --unet-config tiny --image-size 8 --channels-in 1 --batch 8 --steps 2 --repeat 1 --sample-n 8 --sample-steps 2)
else
  OT_ARGS=(--sizes 512 2048 --sinkhorn-sizes 512 2048 --methods auto auction scipy --step-batch 512 2048 --repeat 5)
  VS_ARGS=(--workloads W1 W2 W3 --repeat 3)
  IMG_ARGS=(--fake-devices 0 --devices 1 --unet-config cifar10 --image-size 32 --channels-in 3 --batch 128 --steps 10 --repeat 3 --sample-n 128 --sample-steps 10)
fi

{
  echo "# Accelerator benchmark$([ $SMOKE = 1 ] && echo ' (smoke run: tiny sizes)')"
  echo
  python -c "import jax; d = jax.devices()[0]; print(f'device: {d.platform} ({d.device_kind}), {jax.device_count()} device(s), jax {jax.__version__}')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo
  echo "Command: \`bash benchmarks/accelerator.sh $*\`"
  echo
} > "$TMP/head.md"

run() {  # run NAME CMD...: the part's output file, or a note when it fails
  local name="$1"; shift
  echo "== $name: $*" >&2
  if "$@" > "$TMP/$name.log" 2>&1; then
    echo "   ok ($(( $(date +%s) - START )) s so far)" >&2
  else
    echo "   failed: see the note in the output" >&2
    { echo "## $name: failed"; echo; echo '```'; tail -n 15 "$TMP/$name.log"; echo '```'; echo; } > "$TMP/$name.md"
    return 1
  fi
}

run ot python benchmarks/ot_assignment.py --parts assignment sinkhorn step "${OT_ARGS[@]}" \
  --out "$TMP/ot.md"
if python -c "import torch, flow_matching, torchdiffeq" > /dev/null 2>&1; then
  run vs_pytorch python benchmarks/vs_pytorch.py "${VS_ARGS[@]}" --out "$TMP" --tag _accel \
    && cat "$TMP"/vs_pytorch_accel.md > "$TMP/vs_pytorch.md"
else
  printf '## W1-W3 against flow_matching: skipped\n\ntorch, flow_matching or torchdiffeq is not installed (pip install -e ".[bench]").\n\n' > "$TMP/vs_pytorch.md"
fi
run images python benchmarks/train_images.py "${IMG_ARGS[@]}" --out "$TMP/images.md"

cat "$TMP/head.md" > "$OUT"
for part in ot vs_pytorch images; do
  [ -f "$TMP/$part.md" ] && { sed 's/^# /## /' "$TMP/$part.md"; echo; } >> "$OUT"
done
echo "Total: $(( $(date +%s) - START )) s" >> "$OUT"
echo "wrote $OUT ($(( $(date +%s) - START )) s)" >&2
rm -rf "$TMP"
