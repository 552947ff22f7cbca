#!/usr/bin/env bash
# The server-free tests (unit, functional, handlers) on the other supported CPythons - 3.12 and 3.13 by
# default, `make test` runs the whole suite on the main venv's Python. Each version gets its own venv
# under .venv/ (.venv/py312, .venv/py313: ignored by git and ruff, removed by `make clean`), reused on
# the next run. qldbstream-native is abi3 (pyo3 abi3-py311), so one wheel, built once, serves every
# version; it is required here (REQUIRE_QLDBSTREAM_NATIVE=1), as in CI.
#
#   .ci/other-pythons.sh              # 3.12 and 3.13
#   .ci/other-pythons.sh 3.13         # one version
#
# An interpreter is found as pythonX.Y on PATH or under ~/.pyenv/versions/X.Y.*; a missing one is an
# error (nothing is skipped silently).
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.12 3.13)
export REQUIRE_QLDBSTREAM_NATIVE=1
failed=()

find_python() {
  local v=$1 p
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v"; do
    [ -x "$p" ] && { printf '%s\n' "$p"; return 0; }
  done
  p=$(command -v "python$v" 2>/dev/null) && { printf '%s\n' "$p"; return 0; }
  return 1
}

now() { date +%s; }
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

# 1. The abi3 wheel of qldbstream-native, once, with the main venv's Python (cargo reuses native/target).
WHEELS=.venv/native-wheel
t0=$(now)
step "building the qldbstream-native abi3 wheel"
rm -rf "$WHEELS"
.venv/bin/python -m pip wheel --quiet --no-deps -w "$WHEELS" ./native
wheel=$(ls "$WHEELS"/qldbstream_native-*-abi3-*.whl)
echo "   $wheel in $(( $(now) - t0 )) s"

for v in "${versions[@]}"; do
  py=$(find_python "$v") || {
    echo "Python $v not found (neither python$v on PATH nor ~/.pyenv/versions/$v.*): install it (pyenv install $v) or pass the versions to test" >&2
    exit 1
  }
  venv=.venv/py${v/./}
  t0=$(now)
  step "Python $v ($py): venv $venv"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e '.[dev]' -e ./handlers -e ./tools
  "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
  # amazon-kclpy with the KCL jars (the KCL processor's unit tests import it): from the local Maven
  # repository `make kcl` filled, so nothing is downloaded twice.
  # Its pip and Maven output is shown only when it fails.
  if ! kcl_log=$(deploy/kcl/install.sh "$venv/bin/python" 2>&1 >/dev/null); then
    printf '%s\n' "$kcl_log" >&2
    echo "amazon-kclpy could not be installed into $venv (above); no tests ran on Python $v" >&2
    exit 1
  fi
  t1=$(now)
  echo "   installed in $(( t1 - t0 )) s"
  step "Python $v: pytest tests/unit tests/functional tests/handlers -m 'not integration'"
  # Every version runs even when one fails; the script fails at the end, naming them.
  if "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/functional tests/handlers \
      -m "not integration"; then
    echo "   Python $v tests in $(( $(now) - t1 )) s"
  else
    echo "   Python $v: tests FAILED (in $(( $(now) - t1 )) s)"
    failed+=("$v")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "the server-free tests failed on Python ${failed[*]} (output above)" >&2
  exit 1
fi
