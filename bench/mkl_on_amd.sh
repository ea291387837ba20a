#!/usr/bin/env bash
# Run a command with torch's MKL choosing its kernels by the CPU's feature flags, not by its
# vendor (README, Performance, "MKL on AMD CPUs"):
#
#     bash bench/mkl_on_amd.sh python bench/unet_train_step.py
#     bash bench/mkl_on_amd.sh n2nfunc train --network unet --photos DIR
#
# On AMD CPUs MKL otherwise runs generic float32 GEMM kernels, also where the CPU has AVX-512
# (AMD Zen 4 and later), and n2nfunc's convolutions, built on matmuls, are that much slower;
# torch's own convolutions (oneDNN) are not affected. The two-function library it preloads
# (bench/mkl_on_amd.c) is compiled once with the C compiler ($CC, else cc) into
# ${XDG_CACHE_HOME:-~/.cache}/n2nfunc/. Harmless on Intel CPUs, where MKL already takes
# these paths; not needed on CUDA.
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: bash bench/mkl_on_amd.sh COMMAND [ARGS...]" >&2
    exit 2
fi
source_file="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/mkl_on_amd.c"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/n2nfunc"
library="$cache/libmkl_on_amd.so"
if [ ! -f "$library" ] || [ "$source_file" -nt "$library" ]; then
    compiler="${CC:-cc}"
    if ! command -v "$compiler" > /dev/null; then
        echo "mkl_on_amd.sh: no C compiler '$compiler' (install gcc, or set CC)" >&2
        exit 2
    fi
    mkdir -p "$cache"
    "$compiler" -shared -fPIC -O2 -o "$library.tmp.$$" "$source_file"
    mv "$library.tmp.$$" "$library"
fi
export LD_PRELOAD="$library${LD_PRELOAD:+:$LD_PRELOAD}"
exec "$@"
