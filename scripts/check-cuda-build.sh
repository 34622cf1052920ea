#!/usr/bin/env bash
# Compiles and links `edit --features cuda` on a machine without a GPU or a CUDA installation, so
# that the CUDA code paths cannot rot unseen. Nothing is run on a GPU (a GPU session runs the
# golden tests with --features cuda; benches/gpu.sh is the prepared GPU run).
#
# The CUDA compiler and libraries come from NVIDIA's wheels on PyPI (installed with `pip --target`
# into $CUDA_WHEELS, default target/cuda-wheels-$V; ~1 GB). The driver library (libcuda) only exists
# where a GPU driver is installed, so linking uses a stub of the driver API symbols cudarc
# references (what the CUDA toolkit's own stubs/libcuda.so is); the binary needs the real driver
# at run time. Versions are pinned to a set that compiles together: nvcc, nvvm and the runtime
# headers must be the same release (CUDA 13.2 here), and cudarc 0.19 is told the version
# (CUDARC_CUDA_VERSION) because it does not know every nvcc release. Kernels are built for
# compute capability $CUDA_COMPUTE_CAP (default 90: H100/H200).
#
# CUDA_WHEELS_VERSION picks the release (13.2 by default, the one this was first checked with):
# a binary meant to run on a GPU needs a release its driver supports, since candle's kernels are
# PTX that the driver compiles at start and a driver refuses PTX newer than itself (the lent
# H100/H200 machines have driver 580, CUDA 13.0: build those with CUDA_WHEELS_VERSION=13.0).
#
# Usage: scripts/check-cuda-build.sh [extra cargo args]   (took 30 min on 2 cores from scratch)
set -euo pipefail
cd "$(dirname "$0")/.."
V=${CUDA_WHEELS_VERSION:-13.2}
WHEELS=${CUDA_WHEELS:-$PWD/target/cuda-wheels-$V}
TARGET=${CUDA_TARGET_DIR:-$PWD/target/cuda-$V}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# cudarc is told the release: it does not know every nvcc's. nvcc's wheel requires the crt headers
# unpinned, so they are pinned here too (a newer crt's host_runtime.h breaks an older nvcc's stubs).
export CUDARC_CUDA_VERSION=$(echo "$V" | awk -F. '{printf "%d%02d0", $1, $2}')

if [ ! -x "$WHEELS/nvidia/cu13/bin/nvcc" ]; then
    python3 -m pip install --quiet --target "$WHEELS" \
        "nvidia-cuda-nvcc==$V.*" "nvidia-nvvm==$V.*" "nvidia-cuda-runtime==$V.*" \
        "nvidia-cuda-nvrtc==$V.*" "nvidia-cuda-cccl==$V.*" "nvidia-cuda-crt==$V.*" "nvidia-cublas==13.*" "nvidia-curand==10.*"
fi
CU=$WHEELS/nvidia/cu13
export PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_PATH=$CU CUDA_HOME=$CU

# Link-time library names: unversioned links to the wheels' libraries, and the driver stub.
STUB=$TARGET/cuda-link-stubs
mkdir -p "$STUB"
for lib in nvrtc curand cublas cublasLt cudart; do
    ln -sf "$(ls "$CU"/lib/lib$lib.so.* | head -1)" "$STUB/lib$lib.so"
done
if [ ! -f "$STUB/libcuda.so" ]; then
    # First pass: everything but the final link; then stub the driver symbols cudarc needs.
    cargo build --release --features cuda --locked --target-dir "$TARGET" --lib "$@"
    rlib=$(ls -t "$TARGET"/release/deps/libcudarc-*.rlib | head -1)
    nm "$rlib" | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ {print "void " $2 "(void) {}"}' | sort -u > "$STUB/stub.c"
    cc -shared -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/stub.c"
fi
export LIBRARY_PATH=$STUB:$CU/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
# CUDA_BUILD_TARGETS narrows the build (e.g. "--bin edit --bench scale" for benches/gpu.sh --stage).
# shellcheck disable=SC2086
cargo build --release --features cuda --locked --target-dir "$TARGET" ${CUDA_BUILD_TARGETS:---all-targets} "$@"
echo "CUDA build compiled and linked: $TARGET/release/edit (needs libcuda.so.1 from a GPU driver to run)"
