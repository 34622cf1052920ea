#!/usr/bin/env bash
# The GPU check, one prepared run on one H100/H200 (about 8-12 minutes): forward parity CPU vs GPU
# on the test fixtures (every family), then on random models of GPT-J 6B's and Llama 3 8B's shapes
# in bf16 storage the statistics throughput (and PyTorch's on the same batches), ROME, MEMIT with z
# batched (32) vs serial (1), and MEMIT at EDIT_GPU_MEMIT (1000) requests (issue 25's targets at
# Llama 3 8B: ROME < 2 s per edit, MEMIT 1,000 < 5 min incl. z), and on Llama 3 8B's shape UltraEdit's
# EDIT_GPU_LIFELONG (20000) sequential edits (issue 27's target: < 2 min). Ends with one Markdown table per
# part; logs go to $OUT (or /tmp/edit-gpu) when set.
#
# The lent GPU machines have no Rust toolchain, so the binaries are built here first and carried:
#   CUDA_WHEELS_VERSION=13.0 CUDA_BUILD_TARGETS="--bin edit --bench scale" scripts/check-cuda-build.sh
#   benches/gpu.sh --stage                                  # stripped, xz-compressed binaries in gpu-carry/
# then on the GPU machine (device tool: carry gpu-carry):  benches/gpu.sh
# Where cargo and nvcc exist on the GPU machine itself, the script builds there instead.
# Build with the CUDA release the GPU's driver supports (the kernels are PTX that the driver
# compiles: PTX from a newer nvcc than the driver is refused); driver 580 is CUDA 13.0.
#
# Settings: EDIT_GPU_MEMIT (1000), EDIT_GPU_TEXTS (1000 statistics texts), EDIT_GPU_LAYERS (the
# shape's own depth), EDIT_GPU_STEP_TIMEOUT (150 s per step; a step past it is reported and the rest
# goes on); EDIT_GPU_ZCOMPARE (32 requests for batched vs serial z); EDIT_GPU_LIFELONG (20000; 0
# skips it), EDIT_GPU_LIFELONG_SHAPE (llama-3-8b), EDIT_GPU_LIFELONG_TIMEOUT (300 s); EDIT_GPU_SHAPES ("gpt-j-6b
# llama-3-8b"; EDIT_GPU_SHAPE one of them), EDIT_GPU_DTYPE
# (bf16), EDIT_GPU_STEPS (the config's); EDIT_GPU_DEVICE (cuda; `cpu` runs the same flow on the
# CPU to try the script without a GPU, e.g. EDIT_GPU_SHAPE=gpt2-xl EDIT_GPU_LAYERS=18
# EDIT_GPU_DTYPE=f32 EDIT_GPU_TEXTS=100 EDIT_GPU_STEPS=1 EDIT_GPU_ZCOMPARE=2 EDIT_GPU_MEMIT=2).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu-carry

if [ "${1:-}" = "--stage" ]; then
    set -e
    TARGET=${CUDA_TARGET_DIR:-target/cuda-13.0}
    mkdir -p "$CARRY"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    # The scale bench only spawns `edit`: a CPU build of it (`cargo bench --bench scale --no-run`)
    # is a tenth of the CUDA one's size; the CUDA build's is the fallback.
    scale=$( (ls -t target/release/deps/scale-*; ls -t "$TARGET"/release/deps/scale-*) 2>/dev/null | grep -v '\.d$' | head -1)
    # The working tree travels too (~51 MB of it) and a call carries 64 MiB in all: compressed.
    for pair in "edit:$TARGET/release/edit" "scale:$scale"; do
        strip -o "$CARRY/${pair%%:*}" "${pair#*:}"
        xz -9 -f "$CARRY/${pair%%:*}"
    done
    ls -la "$CARRY"
    exit 0
fi

LOG=${OUT:-/tmp/edit-gpu}
mkdir -p "$LOG"
STEP_TIMEOUT=${EDIT_GPU_STEP_TIMEOUT:-150}
N_MEMIT=${EDIT_GPU_MEMIT:-1000}
TEXTS=${EDIT_GPU_TEXTS:-1000}
SHAPES=${EDIT_GPU_SHAPES:-${EDIT_GPU_SHAPE:-gpt-j-6b llama-3-8b}}
DEV=${EDIT_GPU_DEVICE:-cuda}
ZCOMPARE=${EDIT_GPU_ZCOMPARE:-32}
N_LIFE=${EDIT_GPU_LIFELONG:-20000}
LIFE_SHAPE=${EDIT_GPU_LIFELONG_SHAPE:-llama-3-8b}
LIFE_TIMEOUT=${EDIT_GPU_LIFELONG_TIMEOUT:-300}
started=$(date +%s)
say() { echo "[$(($(date +%s) - started)) s] $*" >&2; }

# Binaries: given (EDIT_BIN and SCALE_BIN), carried, else built here.
if [ -n "${EDIT_BIN:-}" ] && [ -n "${SCALE_BIN:-}" ]; then
    :
elif [ -f "$CARRY/edit.xz" ]; then
    mkdir -p /tmp/edit-bin
    for b in edit scale; do
        python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' "$CARRY/$b.xz" "/tmp/edit-bin/$b"
        chmod +x "/tmp/edit-bin/$b"
    done
    EDIT_BIN=/tmp/edit-bin/edit
    SCALE_BIN=/tmp/edit-bin/scale
elif command -v cargo >/dev/null; then
    say "building with --features cuda"
    cargo build --release --features cuda --locked --bin edit --bench scale 2>&1 | tail -3 >&2
    EDIT_BIN=$PWD/target/release/edit
    SCALE_BIN=$(ls -t target/release/deps/scale-* | grep -v '\.d$' | head -1)
else
    echo "no $CARRY/edit.xz and no cargo: build and stage the binaries first (see the top of $0)" >&2
    exit 1
fi

# The CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC, the runtime): a CUDA installation,
# or the NVIDIA wheels PyTorch brings.
libdirs=$( (ls -d /usr/local/cuda/lib64 2>/dev/null
    python3 - <<'EOF' 2>/dev/null
import glob, os, site
for root in site.getsitepackages():
    for lib in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        print(os.path.dirname(lib))
EOF
) | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 2>/dev/null || true
if ! "$EDIT_BIN" predict --device "$DEV" --model tests/fixtures/tiny-gpt2 "Hello" > "$LOG/first-cuda.txt" 2>&1; then
    echo "the CUDA build does not run here:" >&2
    cat "$LOG/first-cuda.txt" >&2
    ldd "$EDIT_BIN" | grep -i "not found" >&2
    exit 1
fi
say "the build runs on $DEV"

# 1. Forward parity: the same prompts' top-10 log-probabilities on CPU (f32) and GPU (f32, bf16).
PARITY=$LOG/parity.md
echo "| fixture | GPU f32 vs CPU: max abs Δ logprob, same top-1 | GPU bf16 vs CPU f32 |" > "$PARITY"
echo "|---|---|---|" >> "$PARITY"
prompts=("The Eiffel Tower is located in the city of" "Alon Javberg grew up speaking" "The capital of France is")
for m in tiny-gpt2 tiny-gptj tiny-neox tiny-llama tiny-mistral tiny-qwen2 tiny-qwen3 tiny-gemma2 tiny-gemma3 fact-gpt2 fact-llama; do
    for run in "cpu f32" "$DEV f32" "$DEV bf16"; do
        set -- $run
        "$EDIT_BIN" predict -q --json --top-k 10 --device "$1" --dtype "$2" --model "tests/fixtures/$m" "${prompts[@]}" \
            > "$LOG/predict-$m-$1-$2.jsonl" 2>> "$LOG/predict.err" || echo "predict $m $1 $2 failed" >&2
    done
    python3 - "$LOG" "$m" "$DEV" >> "$PARITY" <<'EOF'
import json, sys
log, m, dev = sys.argv[1], sys.argv[2], sys.argv[3]
def read(dev, dt):
    try:
        return [json.loads(l) for l in open(f"{log}/predict-{m}-{dev}-{dt}.jsonl")]
    except Exception:
        return None
def compare(a, b):
    if not a or not b or len(a) != len(b):
        return "failed"
    worst, same = 0.0, True
    for x, y in zip(a, b):
        lx = {t["id"]: t["logprob"] for t in x["top"]}
        ly = {t["id"]: t["logprob"] for t in y["top"]}
        same &= x["top"][0]["id"] == y["top"][0]["id"]
        worst = max([worst] + [abs(lx[i] - ly[i]) for i in lx if i in ly])
    return f"{worst:.2e}, {'yes' if same else 'NO'}"
cpu = read("cpu", "f32")
print(f"| {m} | {compare(cpu, read(dev, 'f32'))} | {compare(cpu, read(dev, 'bf16'))} |")
EOF
done
say "parity done"

# 2. Each shape in bf16 storage on the GPU.
export EDIT_BIN EDIT_BENCH_DTYPE=${EDIT_GPU_DTYPE:-bf16} EDIT_BENCH_DEVICE=$DEV EDIT_BENCH_TEXTS=$TEXTS
[ -n "${EDIT_GPU_LAYERS:-}" ] && export EDIT_BENCH_LAYERS=$EDIT_GPU_LAYERS
[ -n "${EDIT_GPU_STEPS:-}" ] && export EDIT_BENCH_STEPS=$EDIT_GPU_STEPS
bench() { # name, time limit in s, then environment assignments for one run of the scale bench
    local name=$1 limit=$2
    shift 2
    if env "$@" timeout "$limit" "$SCALE_BIN" > "$LOG/$name.md" 2> "$LOG/$name.log"; then
        say "$name done"
    else
        say "$name failed or ran past $limit s (log: $LOG/$name.log)"
        echo "| $name | failed or past $limit s: $(grep -m1 -i 'error' "$LOG/$name.log" | cut -c1-200) | |" > "$LOG/$name.md"
    fi
}
# 3. Lifelong editing (issue 27's GPU row): UltraEdit, EDIT_GPU_LIFELONG (20000) WikiBigEdit-layout
# edits in turns of 100 through `edit eval --stream --sequential` on the LIFE_SHAPE checkpoint; the
# edit time is the sum of the turns' (each chunk's `time`, the edit alone), the wall time includes
# scoring every record before and after its turn and again at the end.
lifelong() {
    local name=$SHAPE-lifelong-$N_LIFE config=()
    python3 benches/lifelong/synthetic_wikibigedit.py "$N_LIFE" "$LOG/wikibigedit-$N_LIFE.json"
    # The published config where the checkpoint has the model's full depth, else the generic start.
    [ -z "${EDIT_GPU_LAYERS:-}" ] && [ "$SHAPE" = llama-3-8b ] && config=(--config configs/ultraedit/meta-llama_Meta-Llama-3-8B-Instruct.json)
    if timeout "$LIFE_TIMEOUT" "$EDIT_BIN" eval --method ultraedit "${config[@]}" -q --json --model "$EDIT_BENCH_MODEL_DIR" \
        --dataset "$LOG/wikibigedit-$N_LIFE.json" --stream --sequential --num-edits 100 --score-batch 256 --device "$DEV" --dtype "$EDIT_BENCH_DTYPE" \
        > "$LOG/$name.json" 2> "$LOG/$name.log"; then
        python3 - "$LOG/$name.json" "$SHAPE" "$EDIT_BENCH_DTYPE" > "$LOG/$name.md" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))[0]
turns = -(-s["num_cases"] // s["num_edits"])
edit_s = s["time"][0] * s["num_cases"] / s["num_edits"]
print(f"| UltraEdit, {s['num_cases']} edits in {turns} turns of {s['num_edits']}, {sys.argv[2]} {sys.argv[3]} "
      f"| edits {edit_s:.0f} s ({edit_s / turns:.2f} s per turn); with scoring {s['seconds']:.0f} s | {s['num_failed']} turns failed |")
EOF
        say "$name done"
    else
        say "$name failed or ran past $LIFE_TIMEOUT s (log: $LOG/$name.log)"
        echo "| $name | failed or past $LIFE_TIMEOUT s: $(grep -m1 -i 'error' "$LOG/$name.log" | cut -c1-200) | |" > "$LOG/$name.md"
    fi
}

for SHAPE in $SHAPES; do
    export EDIT_BENCH_SHAPE=$SHAPE EDIT_BENCH_MODEL_DIR=/tmp/edit-gpu-model-$SHAPE EDIT_BENCH_STATS_DIR=/tmp/edit-gpu-stats-$SHAPE
    # The checkpoint (12 GB for GPT-J, 16 GB for Llama 3 8B) is written once, by a run with no jobs;
    # the previous shape's is removed first (the machine's disk holds one).
    rm -rf /tmp/edit-gpu-model-* 2>/dev/null
    bench "$SHAPE-write" 300 EDIT_BENCH_JOBS=none
    bench "$SHAPE-stats" "$STEP_TIMEOUT" EDIT_BENCH_JOBS=predict,stats EDIT_BENCH_TORCH=1
    bench "$SHAPE-rome" "$STEP_TIMEOUT" EDIT_BENCH_JOBS=rome
    bench "$SHAPE-memit-z" "$STEP_TIMEOUT" EDIT_BENCH_JOBS=memit EDIT_BENCH_MEMIT=$ZCOMPARE EDIT_BENCH_ZBATCH=1,32
    bench "$SHAPE-memit-$N_MEMIT" "$STEP_TIMEOUT" EDIT_BENCH_JOBS=memit EDIT_BENCH_MEMIT=$N_MEMIT EDIT_BENCH_ZBATCH=32
    if [ "$SHAPE" = "$LIFE_SHAPE" ] && [ "$N_LIFE" -gt 0 ]; then
        lifelong
    fi
done

echo
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/device: /'
echo "total $(($(date +%s) - started)) s"
echo
echo "Forward parity (top-10 log-probabilities of 3 prompts):"
echo
cat "$PARITY"
echo
for SHAPE in $SHAPES; do
    echo
    head -1 "$LOG/$SHAPE-write.md"
    echo
    echo "| job | time | peak memory |"
    echo "|---|---|---|"
    for f in stats rome memit-z "memit-$N_MEMIT" "lifelong-$N_LIFE"; do
        grep '^| ' "$LOG/$SHAPE-$f.md" 2>/dev/null | grep -v '^| job\|^|---' || true
    done
done
