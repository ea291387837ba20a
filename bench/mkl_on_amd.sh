#!/usr/bin/env bash
# Run a command with torch's MKL choosing its kernels by the CPU's feature flags, not by its
# vendor (docs/performance.md, "MKL on AMD CPUs"). Linux only.
#
#     bash bench/mkl_on_amd.sh python bench/unet_train_step.py
#     bash bench/mkl_on_amd.sh n2nfunc train --network unet --photos DIR
#
# On AMD CPUs MKL otherwise runs generic float32 GEMM kernels, also where the CPU has AVX-512
# (AMD Zen 4 and later), and n2nfunc's convolutions, built on matmuls, are that much slower;
# torch's own convolutions (oneDNN) are not affected. The two-function library it preloads
# (bench/mkl_on_amd.c) is compiled once with the C compiler ($CC, else cc) into
# ${XDG_CACHE_HOME:-~/.cache}/n2nfunc/, named by a checksum of its source and the machine
# type. Harmless on Intel CPUs, where MKL already takes these paths; not needed on CUDA.
set -euo pipefail
usage="usage: bash bench/mkl_on_amd.sh COMMAND [ARGS...]"
if [ $# -eq 0 ]; then
    echo "$usage" >&2
    exit 2
fi
if [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "$usage"
    echo "runs COMMAND with torch's MKL taking its AVX-512 kernels on AMD CPUs (see docs/performance.md)"
    exit 0
fi
if [ "$(uname -s)" != "Linux" ]; then
    echo "mkl_on_amd.sh: Linux only (it preloads a library with LD_PRELOAD)" >&2
    exit 2
fi
if ! command -v -- "$1" > /dev/null; then
    echo "mkl_on_amd.sh: command not found: $1 (is the virtual environment active?)" >&2
    exit 127
fi
if [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${HOME:-}" ]; then
    echo "mkl_on_amd.sh: neither XDG_CACHE_HOME nor HOME is set: nowhere to keep the library" >&2
    exit 2
fi
source_file="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/mkl_on_amd.c"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/n2nfunc"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"  # absolute: the command may change directory
case "$cache" in
*[[:space:]:]*)
    # LD_PRELOAD splits on spaces and colons: the preload would be dropped without a word
    echo "mkl_on_amd.sh: the cache folder '$cache' has a space or colon; set XDG_CACHE_HOME" >&2
    exit 2
    ;;
esac
checksum="$(cksum < "$source_file" | cut -d ' ' -f 1)"
library="$cache/libmkl_on_amd-$checksum-$(uname -m).so"
if [ ! -f "$library" ]; then
    read -r -a compiler <<< "${CC:-cc}"  # CC may hold words: "ccache gcc"
    if ! command -v -- "${compiler[0]}" > /dev/null; then
        echo "mkl_on_amd.sh: no C compiler '${compiler[0]}' (install gcc, or set CC)" >&2
        exit 2
    fi
    "${compiler[@]}" -shared -fPIC -O2 -o "$library.tmp.$$" "$source_file"
    mv "$library.tmp.$$" "$library"  # atomic: concurrent first runs each finish one library
fi
export LD_PRELOAD="$library${LD_PRELOAD:+:$LD_PRELOAD}"
exec -- "$@"
