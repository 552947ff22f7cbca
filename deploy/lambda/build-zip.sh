#!/usr/bin/env bash
# Build the Lambda deployment package (a zip) for qldbstream.aws_lambda.handler - see docs/packaging.md.
#
#   deploy/lambda/build-zip.sh                      # -> dist/qldbstream-lambda-<version>-x86_64.zip (python3.13)
#   PYTHON_VERSION=3.12 deploy/lambda/build-zip.sh  # for the python3.12 runtime (3.11, 3.12 or 3.13; the
#                                                   # template's PythonRuntime must be the same version)
#   ARCH=arm64 deploy/lambda/build-zip.sh           # Graviton (the native wheel must be aarch64 too)
#   NATIVE_WHEEL=dist/qldbstream_native-….whl deploy/lambda/build-zip.sh
#   HANDLER_DEPS=1 deploy/lambda/build-zip.sh       # qldbstream-handlers with its dependencies (pyarrow,
#                                                   # for the Parquet export/analytics sink; still a zip)
#
# Everything comes as wheels for the function's platform (manylinux2014, CPython PYTHON_VERSION), whatever
# the machine building it: pip --platform/--only-binary never runs a build script for the target. Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
ARCH=${ARCH:-x86_64}
PYTHON_VERSION=${PYTHON_VERSION:-3.13}
case "$PYTHON_VERSION" in
  3.11 | 3.12 | 3.13) ;;
  *) echo "PYTHON_VERSION must be 3.11, 3.12 or 3.13 (a Lambda Python runtime qldbstream supports)" >&2; exit 2 ;;
esac
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
git ls-files -co --exclude-standard -- qldbstream handlers pyproject.toml README.md LICENSE \
  | grep -v __pycache__ | while read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done \
  | tar -cf - -T - | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/wheels" "$WORK/src" "$WORK/src/handlers"

# 2. Install them and the dependencies for the target platform (no bytecode yet: pip would compile it for
#    its own Python, not the runtime's - step 3).
pip_target=("$PYTHON" -m pip install --quiet --no-compile --target "$WORK/package" --platform "$PLATFORM"
            --implementation cp --python-version "$PYTHON_VERSION" --only-binary=:all:)
# Each wheel without its dependencies, then the dependencies named here: amazon-ion requires jsonconversion
# (only for amazon.ion.json_encoder, which qldbstream never imports), and jsonconversion requires numpy
# (~70 MB unzipped) but imports it only when present - so amazon-ion and jsonconversion come with
# --no-deps, and the zip holds no numpy (docs/packaging.md has the sizes).
requirements() {  # a wheel's unconditional Requires-Dist lines, one a line, without qldbstream itself
  "$PYTHON" - "$1" <<'PY'
import sys, zipfile
from email.parser import Parser
wheel = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
for req in Parser().parsestr(wheel.read(meta).decode()).get_all("Requires-Dist") or []:
    if "extra ==" not in req and not req.startswith("qldbstream"):
        print(req.replace(" ", ""))
PY
}
"${pip_target[@]}" --no-deps "$WORK"/wheels/qldbstream-*.whl "$WORK"/wheels/qldbstream_handlers-*.whl
mapfile -t requires < <(requirements "$WORK"/wheels/qldbstream-*.whl)
# The handlers' entry points (QLDBSTREAM_HANDLERS=audit,...) work without their own dependencies: only the
# export handler (format = parquet) and the analytics handler's Parquet sink import pyarrow, when used.
if [ "${HANDLER_DEPS:-0}" = 1 ]; then
  mapfile -t -O "${#requires[@]}" requires < <(requirements "$WORK"/wheels/qldbstream_handlers-*.whl)
fi
no_deps=(jsonconversion)
with_deps=()
for req in "${requires[@]}"; do
  case "$req" in amazon-ion* | amazon_ion*) no_deps+=("$req") ;; *) with_deps+=("$req") ;; esac
done
"${pip_target[@]}" --no-deps "${no_deps[@]}"
"${pip_target[@]}" "${with_deps[@]}"
if [ -n "${NATIVE_WHEEL:-}" ]; then
  "${pip_target[@]}" --no-deps "$NATIVE_WHEEL"
fi
rm -rf "$WORK/package/bin"

# 3. Bytecode now: /var/task is read-only, so Python could not cache it at run time. Only the runtime's own
#    version reads it (__pycache__/*.cpython-313.pyc), so an interpreter of PYTHON_VERSION compiles it.
compile_python=${COMPILE_PYTHON:-}
if [ -z "$compile_python" ]; then
  if [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYTHON_VERSION" ]; then
    compile_python=$PYTHON
  else
    for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PYTHON_VERSION".*/bin/python"$PYTHON_VERSION" \
             "$(command -v "python$PYTHON_VERSION" 2>/dev/null || true)"; do
      [ -n "$p" ] && [ -x "$p" ] && { compile_python=$p; break; }
    done
  fi
fi
if [ -z "$compile_python" ]; then
  echo "no Python $PYTHON_VERSION here to compile the bytecode for the python$PYTHON_VERSION runtime:" \
    "install it (pyenv install $PYTHON_VERSION) or set COMPILE_PYTHON to one; nothing was built" >&2
  exit 1
fi
"$compile_python" -m compileall -q -j 0 "$WORK/package"

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
