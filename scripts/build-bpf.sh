#!/usr/bin/env bash
# Build the eBPF programs of the kernel data path (docs/kernel.md): src/teredo/bpf/*.bpf.c ->
# src/teredo/bpf/*.bpf.o, shipped in the package (pyproject.toml), so no compiler at run time.
# Called by scripts/setup.sh; rebuilds only what is older than its source or this script.
#
# Headers: the kernel's uapi headers (Debian's linux-libc-dev) and libbpf's bpf_helpers.h
# (libbpf-dev), not a vmlinux.h dumped from this machine's BTF: the objects use no kernel-internal
# struct (no CO-RE), only the stable uapi ones, so they build the same on any Debian 12 machine,
# with or without /sys/kernel/btf/vmlinux. `-I/usr/include/<multiarch>` finds asm/types.h
# (Debian keeps it there; clang -target bpf does not look there itself).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here/src/teredo/bpf"
clang=${CLANG:-clang}
command -v "$clang" >/dev/null || { echo "build-bpf: $clang not found (apt-get install clang llvm libbpf-dev)" >&2; exit 1; }
[[ -e /usr/include/bpf/bpf_helpers.h ]] || { echo "build-bpf: /usr/include/bpf/bpf_helpers.h missing (apt-get install libbpf-dev)" >&2; exit 1; }
multiarch=$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
shopt -s nullglob
for c in "$src"/*.bpf.c; do
    o="${c%.c}.o"
    if [[ -e $o && $o -nt $c && $o -nt "${BASH_SOURCE[0]}" ]] && ! find "$src" -name '*.h' -newer "$o" | grep -q .; then
        continue
    fi
    # -g: BTF in the object, which libbpf needs for the maps' key/value types (bpftool map dump
    # shows them) and the verifier's messages name source lines with.
    "$clang" -target bpf -O2 -g -Wall -Werror \
        -I"/usr/include/$multiarch" -I"$src" \
        -c "$c" -o "$o.tmp"
    mv "$o.tmp" "$o"
    echo "build-bpf: built $(basename "$o")"
done
