#!/usr/bin/env bash
# Build the Lambda deployment package (a zip) for qldbstream.aws_lambda.handler - see docs/packaging.md.
#
#   deploy/lambda/build-zip.sh                      # -> dist/qldbstream-lambda-<version>-x86_64.zip
#   ARCH=arm64 deploy/lambda/build-zip.sh           # Graviton (the native wheel must be aarch64 too)
#   NATIVE_WHEEL=dist/qldbstream_native-….whl deploy/lambda/build-zip.sh
#   HANDLER_DEPS=1 deploy/lambda/build-zip.sh       # qldbstream-handlers with its dependencies (pyarrow:
#                                                   # ~270 MB unzipped, over Lambda's 250 MB - use an image)
#
# Everything comes as wheels for the function's platform (manylinux2014, CPython 3.11), whatever the
# machine building it: pip --platform/--only-binary never runs a build script for the target. Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
ARCH=${ARCH:-x86_64}
case "$ARCH" in
  x86_64) PLATFORM=manylinux2014_x86_64 ;;
  arm64) PLATFORM=manylinux2014_aarch64 ;;
  *) echo "ARCH must be x86_64 or arm64" >&2; exit 2 ;;
esac
OUT=${OUT:-dist}
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. qldbstream and qldbstream-handlers as wheels, built from a copy (no build/ or egg-info in the tree).
mkdir -p "$WORK/src" "$WORK/wheels" "$WORK/package" "$OUT"
OUT=$(cd "$OUT" && pwd)
git ls-files -co --exclude-standard -- qldbstream handlers pyproject.toml README.md \
  | grep -v __pycache__ | while read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done \
  | tar -cf - -T - | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/wheels" "$WORK/src" "$WORK/src/handlers"

# 2. Install them and the dependencies for the target platform.
pip_target=("$PYTHON" -m pip install --quiet --target "$WORK/package" --platform "$PLATFORM"
            --implementation cp --python-version 3.11 --only-binary=:all:)
"${pip_target[@]}" "$WORK"/wheels/qldbstream-*.whl
if [ "${HANDLER_DEPS:-0}" = 1 ]; then
  "${pip_target[@]}" "$WORK"/wheels/qldbstream_handlers-*.whl
else
  # The entry points (QLDBSTREAM_HANDLERS=audit,...) work without the handlers' own dependencies; only
  # the analytics handler's Parquet sink imports pyarrow, and only when configured.
  "${pip_target[@]}" --no-deps "$WORK"/wheels/qldbstream_handlers-*.whl
fi
if [ -n "${NATIVE_WHEEL:-}" ]; then
  "${pip_target[@]}" --no-deps "$NATIVE_WHEEL"
fi
rm -rf "$WORK/package/bin"

# 3. Bytecode now: /var/task is read-only, so Python could not cache it at run time.
"$PYTHON" -m compileall -q -j 0 "$WORK/package"

ZIP="$OUT/qldbstream-lambda-$VERSION-$ARCH.zip"
rm -f "$ZIP"
(cd "$WORK/package" && zip -qr9 "$ZIP" .)
unzipped=$(du -sm "$WORK/package" | cut -f1)
echo "$ZIP: $(du -h "$ZIP" | cut -f1) zipped, ${unzipped} MB unzipped (Lambda allows 250 MB)" >&2
if [ "$unzipped" -gt 250 ]; then
  echo "too large for a zip deployment: use the container image (docs/packaging.md)" >&2
  exit 1
fi
echo "$ZIP"
