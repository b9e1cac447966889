#!/bin/sh
# Install dpc's libdeepmd_c for C/C++ programs and MD codes:
#   PREFIX/lib/libdeepmd_c.so
#   PREFIX/include/deepmd/c_api.h
#   PREFIX/lib/pkgconfig/deepmd_c.pc                  (pkg-config --cflags --libs deepmd_c)
#   PREFIX/lib/cmake/DeePMD/DeePMDConfig.cmake        (find_package(DeePMD) -> DeePMD::deepmd_c)
#
# usage: capi/install.sh PREFIX [path/to/libdeepmd_c.so]
# The library defaults to target/release/libdeepmd_c.so (cargo build --release).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:?usage: capi/install.sh PREFIX [libdeepmd_c.so]}
lib=${2:-$here/../target/release/libdeepmd_c.so}
[ -f "$lib" ] || { echo "no $lib: run cargo build --release first" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n 1)
# The DeePMD-kit release whose C API this library implements: what find_package(DeePMD
# VERSION) compares against.
api_version=3.2.0
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

install -d "$prefix/lib" "$prefix/include/deepmd" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/DeePMD"
install -m 0755 "$lib" "$prefix/lib/libdeepmd_c.so"
install -m 0644 "$here/include/deepmd/c_api.h" "$prefix/include/deepmd/c_api.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$here/install/deepmd_c.pc.in" \
    > "$prefix/lib/pkgconfig/deepmd_c.pc"
sed -e "s|@VERSION@|$api_version|g" -e "s|@DPC_VERSION@|$version|g" "$here/install/DeePMDConfig.cmake.in" \
    > "$prefix/lib/cmake/DeePMD/DeePMDConfig.cmake"
sed -e "s|@VERSION@|$api_version|g" "$here/install/DeePMDConfigVersion.cmake.in" \
    > "$prefix/lib/cmake/DeePMD/DeePMDConfigVersion.cmake"
echo "installed libdeepmd_c $version under $prefix"
