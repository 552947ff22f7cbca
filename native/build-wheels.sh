#!/usr/bin/env bash
# Build the qldbstream-native wheels a deployment installs (Lambda zip or image, worker image) - see
# docs/packaging.md: manylinux2014 (glibc 2.17), abi3 (one wheel for CPython 3.11, 3.12, 3.13, ...), with
# zig as the linker, so no Docker and no manylinux build image; any Linux or macOS host with rustup.
#
#   native/build-wheels.sh                    # -> dist/qldbstream_native-0.1.0-cp311-abi3-manylinux2014_{x86_64,aarch64}….whl
#   ARCHS=x86_64 native/build-wheels.sh       # one architecture (x86_64 or aarch64)
#   OUT=/tmp/wheels native/build-wheels.sh
#
# Needs the Rust toolchain (cargo, rustup: a missing target is added with `rustup target add`) and PyPI
# the first time (maturin and ziglang go into the tool venv TOOLS_VENV, default .venv/wheel-tools).
# CARGO_TARGET_DIR (default $TMPDIR/qldbstream-native-target) keeps these builds out of native/target,
# the developers' incremental build; a second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-dist}
ARCHS=${ARCHS:-x86_64 aarch64}
TOOLS=${TOOLS_VENV:-.venv/wheel-tools}
case "$TOOLS" in /*) ;; *) TOOLS=$PWD/$TOOLS ;; esac
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/qldbstream-native-target}

command -v cargo >/dev/null || { echo "no Rust toolchain (cargo): install it with rustup; nothing was built" >&2; exit 2; }
for arch in $ARCHS; do
  case "$arch" in
    x86_64 | aarch64) ;;
    *) echo "ARCHS lists x86_64 and/or aarch64, not '$arch'; nothing was built" >&2; exit 2 ;;
  esac
done

if ! { [ -x "$TOOLS/bin/maturin" ] && "$TOOLS/bin/python" -c 'import ziglang' 2>/dev/null; }; then
  echo "installing maturin and ziglang into $TOOLS" >&2
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2" ziglang
fi
export PATH="$TOOLS/bin:$PATH" # maturin runs zig as `python -m ziglang` of the tool venv
mkdir -p "$OUT"

for arch in $ARCHS; do
  target=$arch-unknown-linux-gnu
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    echo "adding the Rust standard library for $target (rustup target add)" >&2
    rustup target add "$target" >&2 || {
      echo "cannot add the Rust target $target (offline?): no $arch wheel; the others are in $OUT" >&2
      exit 1
    }
  fi
  echo "building the $arch wheel (manylinux2014, abi3) into $OUT" >&2
  maturin build --release --zig --compatibility manylinux2014 --target "$target" \
    -m native/Cargo.toml -o "$OUT" >&2
done
ls -1 "$OUT"/qldbstream_native-*-abi3-manylinux2014_*.whl
