#!/usr/bin/env bash
# gpu_check: on a machine with a CUDA GPU, train briefly with automatic precision and print
# images/s and the precision chosen. Self-contained: synthesises a small image tree (no data
# download, no ../shared/data), uses the python that already has the dependencies, or makes
# .venv-gpu (with the system's torch) and installs the missing ones. About 2-4 minutes.
#   bash bench/gpu_check.sh                 # EPOCHS=3 TRAIN_PER_CLASS=200 by default
#   PYTHON=/opt/conda/bin/python bash bench/gpu_check.sh
#   TORCH_ONLY=1 bash bench/gpu_check.sh     # skip the lit_vision fits (about 30 s)
# Prints a summary between "=== lit_vision GPU check ===" lines: the fits, then a torch-only part
# (SimpleCNN training steps on synthetic tensors in fp32 and in the automatic precision). If the
# lit_vision dependencies cannot be imported or installed (no network), both parts say so.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${WORK:-$(mktemp -d /tmp/lv_gpu_check.XXXXXX)}
mkdir -p "$WORK"
EPOCHS=${EPOCHS:-3}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-200}
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-15}
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

echo "work folder: $WORK"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "error: $PY has no torch; set PYTHON=/path/to/python with torch installed" >&2
    exit 2
fi
"$PY" - <<'PYEOF' | tee -a "$SUMMARY"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}, "
      f"devices {torch.cuda.device_count()}")
if torch.cuda.is_available():
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        native = torch.cuda.is_bf16_supported()
    print(f"GPU {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, native bf16 {native}")
PYEOF

deps_ok() { "$1" -c "import lit_vision.cli, tensorboard" >/dev/null 2>&1; }
FULL=1
if [ "${TORCH_ONLY:-0}" = 1 ]; then
    FULL=0
elif ! deps_ok "$PY"; then
    VENV="$REPO/.venv-gpu"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv --system-site-packages "$VENV" || FULL=0
    fi
    if [ "$FULL" = 1 ] && ! deps_ok "$VENV/bin/python"; then
        # Keep the machine's torch (and torchvision): pin them, install only what is missing.
        "$PY" -c "
import importlib.metadata as m
for name in ('torch', 'torchvision'):
    try: print(f'{name}=={m.version(name)}')
    except m.PackageNotFoundError: pass" > "$WORK/constraints.txt"
        echo "installing lit_vision's dependencies into $VENV (pinned: $(tr '\n' ' ' < "$WORK/constraints.txt"))"
        timeout 240 "$VENV/bin/python" -m pip install -q --retries 1 -c "$WORK/constraints.txt" -e "$REPO" \
            || echo "pip install failed (no network?)"
    fi
    if [ "$FULL" = 1 ] && deps_ok "$VENV/bin/python"; then PY="$VENV/bin/python"; else FULL=0; fi
fi

if [ "$FULL" = 1 ]; then
    echo "python: $PY"
    "$PY" - "$WORK/data" "$TRAIN_PER_CLASS" <<'PYEOF'
# A learnable synthetic tree: 20 classes of 32-px images (class = colour x stripe direction).
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root, per_class = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:32, 0:32]
for c in range(20):
    stripes = np.sin((xx if c % 2 else yy) * (0.4 + 0.1 * (c // 4)))[..., None]
    colour = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256], dtype=np.float64)
    for split, n in (("train", per_class), ("val", max(10, per_class // 5))):
        folder = root / split / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = 0.6 * colour + 60 * stripes + rng.normal(0, 25, (32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
print(f"synthetic tree: {root} (20 classes, {per_class} train + {max(10, per_class // 5)} val each)")
PYEOF
    fit() {  # fit NAME EXTRA_ARGS...
        local name=$1; shift
        local log="$WORK/$name.log"
        local start=$SECONDS
        timeout 150 "$PY" -m lit_vision fit --config configs/gtsrb_cnn.yaml --data.root "$WORK/data" \
            --trainer.max_epochs "$EPOCHS" --trainer.enable_progress_bar false \
            --trainer.logger.init_args.save_dir "$WORK/tb_$name" "$@" > "$log" 2>&1
        local rc=$?
        local precision rate acc
        precision=$(grep -o 'lit_vision: precision [^ ]*' "$log" | tail -1 | awk '{print $3}')
        # the last epoch's rate (the first includes CUDA/cuDNN warm-up and worker start)
        rate=$(grep -o 'lit_vision epoch [0-9]*: [0-9]* train images/s' "$log" | tail -1 | awk '{print $4}')
        acc=$(grep -o 'acc[0-9.]*[0-9]\.ckpt' <(find "$WORK/tb_$name" -name 'best-*.ckpt') | tail -1)
        say "$(printf '%-22s rc %-3s precision %-10s %8s train images/s  %4ss  %s' "$name" "$rc" "${precision:-?}" "${rate:-?}" "$((SECONDS - start))" "${acc:-}")"
        grep -h 'lit_vision run:' "$log" | head -1 | tee -a "$SUMMARY"
        [ "$rc" = 0 ] || tail -25 "$log"
    }
    fit auto_1gpu --trainer.devices 1
    fit fp32_1gpu --trainer.devices 1 --trainer.precision 32-true
    fit auto_ddp_all_gpus --config configs/ddp.yaml
fi

# Torch-only: SimpleCNN training steps on synthetic batches, fp32 vs the automatic precision
# (the package's SimpleCNN, so it needs lit_vision's dependencies; without them it is skipped).
"$PY" - <<'PYEOF' | tee -a "$SUMMARY"
import sys, time
import torch
try:
    from lit_vision.networks import SimpleCNN
except ImportError as err:
    print(f"torch-only check skipped: lit_vision does not import ({err})"); sys.exit(0)
if not torch.cuda.is_available():
    print("torch-only check: no CUDA device"); sys.exit(0)
try:  # the rule lit_vision.cli.auto_precision applies on CUDA
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
except TypeError:
    bf16 = torch.cuda.is_bf16_supported()
auto = torch.bfloat16 if bf16 else torch.float16
def rate(dtype, steps=60, batch=512):
    torch.manual_seed(0)
    model = SimpleCNN(43, channels=(32, 64, 128)).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    x = torch.randn(batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 43, (batch,), device="cuda")
    for i in range(steps + 10):
        if i == 10:
            torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)
fp32, mixed = rate(torch.float32), rate(auto)
name = "bf16-mixed" if auto == torch.bfloat16 else "16-mixed"
print(f"torch-only SimpleCNN 32px batch 512: fp32 {fp32:,.0f} images/s, {name} {mixed:,.0f} images/s "
      f"(x{mixed / fp32:.2f}); automatic precision would be {name}")
PYEOF

echo "=== lit_vision GPU check ==="
[ "$FULL" = 1 ] || echo "(lit_vision dependencies unavailable: torch-only part only)"
cat "$SUMMARY"
echo "=== lit_vision GPU check ==="
