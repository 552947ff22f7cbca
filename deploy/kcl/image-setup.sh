#!/usr/bin/env bash
# Installs the qldbstream KCL worker into PREFIX: every install step of the Dockerfile, as a script that CI
# (and a developer) can run against a scratch directory, since no Docker engine builds the image there.
#
#   PREFIX/venv   a virtual environment with qldbstream, the handler plugins (handlers/), amazon-kclpy,
#                 and qldbstream-native (native/) when it is built (see WITH_NATIVE)
#   PREFIX/jars   the KCL MultiLangDaemon's jars (deploy/kcl/install.sh with KCL_JAR_DIR); the venv's
#                 amazon_kclpy/jars becomes a symbolic link to it, so the image holds them once
#
# Then it checks the result: the jars are complete, `python -m qldbstream.kcl --help` and
# `qldbstream kcl --print-properties` run from the venv. Logs go to stderr; stdout is PREFIX.
#
# Usage: deploy/kcl/image-setup.sh PREFIX
# Environment:
#   PYTHON              the interpreter that creates the venv (default: python3; must be 3.11+)
#   WITH_NATIVE   auto (default: build native/ when `cargo` is on the PATH), 1 (build it or fail), 0 (skip)
#   MAVEN_REPO, MVN     passed on to install.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
prefix=${1:?usage: deploy/kcl/image-setup.sh PREFIX}
python=${PYTHON:-python3}
native=${WITH_NATIVE:-auto}
log() { echo "kcl/image-setup.sh: $*" >&2; }

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
start=$SECONDS

# 1. The venv and the Python distributions (non-editable: the image does not keep the sources).
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log "$python is older than 3.11"; exit 2; }
[[ -x "$prefix/venv/bin/python" ]] || "$python" -m venv "$prefix/venv"
py="$prefix/venv/bin/python"
pip=("$py" -m pip install --no-input --disable-pip-version-check --quiet)
log "installing qldbstream and the handler plugins into $prefix/venv"
"${pip[@]}" "$repo[cli,prometheus]" "$repo/handlers" >&2  # the command's display, /metrics (extras)

# 2. qldbstream-native, when asked for or when a Rust toolchain is there (pip builds it with maturin).
case "$native" in
  0) log "qldbstream-native: skipped (WITH_NATIVE=0)" ;;
  1 | auto)
    if [[ ! -f "$repo/native/pyproject.toml" ]]; then
      [[ "$native" == 1 ]] && { log "WITH_NATIVE=1 but $repo/native has no pyproject.toml"; exit 2; }
      log "qldbstream-native: not in this checkout; the pure-Python paths are used"
    elif command -v cargo >/dev/null; then
      log "building qldbstream-native with $(cargo --version)"
      "${pip[@]}" "$repo/native" >&2
    elif [[ "$native" == 1 ]]; then
      log "WITH_NATIVE=1 but there is no Rust toolchain (cargo) to build native/"; exit 2
    else
      log "qldbstream-native: no Rust toolchain (cargo); the pure-Python paths are used"
    fi
    ;;
  *) log "WITH_NATIVE must be auto, 1 or 0, not '$native'"; exit 2 ;;
esac

# 3. amazon-kclpy and the daemon's jars, resolved with Maven (install.sh), copied to PREFIX/jars.
mkdir -p "$prefix/jars"
jar_dir=$(KCL_JAR_DIR="$prefix/jars" "$here/install.sh" "$py")
if [[ "$jar_dir" != "$prefix/jars" && ! -L "$jar_dir" ]]; then
  cp -n "$jar_dir"/*.jar "$prefix/jars/"
  rm -rf "$jar_dir"
  # Relative, so that the tree can be copied elsewhere (another Docker stage, another prefix).
  ln -s "$("$py" -c 'import os, sys; print(os.path.relpath(sys.argv[1], os.path.dirname(sys.argv[2])))' \
    "$prefix/jars" "$jar_dir")" "$jar_dir"
fi

# 4. Check what the image will run.
jars=$(find "$prefix/jars" -maxdepth 1 -name '*.jar' | wc -l)
expected=$("$py" "$here/kclpy_pom.py" jars "$here/pom.xml" | wc -l)
[[ "$jars" -eq "$expected" ]] || { log "$prefix/jars holds $jars jars, pom.xml lists $expected"; exit 1; }
"$py" -m qldbstream.kcl --help >/dev/null
KCL_JAR_DIR="$prefix/jars" "$py" -m qldbstream.cli.kcl --print-properties \
  --stream check --region us-east-1 --worker-id check >/dev/null
native_state=$("$py" -c 'from qldbstream.core.deaggregate import native_available as n; print("with" if n() else "without")')
log "OK in $((SECONDS - start)) s: $prefix/venv ($native_state qldbstream-native), $jars jars in $prefix/jars"
echo "$prefix"
