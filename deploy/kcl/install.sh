#!/usr/bin/env bash
# Installs the real KCL MultiLangDaemon for one Python environment:
#   1. resolves its jars from Maven Central with Maven (deploy/kcl/pom.xml; fills the local Maven repo),
#   2. installs amazon-kclpy (the version pinned in pom.xml) into the environment, with
#      KCL_MVN_REPO_SEARCH_URL pointing amazon-kclpy's setup.py at the local Maven repo, so setup.py
#      copies the jars from there and downloads nothing itself,
#   3. prints the directory holding the jars (amazon_kclpy/jars of that environment) on stdout.
# Everything else goes to stderr, so `JARS=$(deploy/kcl/install.sh)` works.
#
# Idempotent: when amazon-kclpy is already installed at the pinned version with every jar, it only
# prints the jar directory (well under a second).
#
# Usage: deploy/kcl/install.sh [PYTHON]
#   PYTHON        the target environment's python (default: $KCL_PYTHON, else <repo>/.venv/bin/python
#                 if it exists, else python3)
# Environment:
#   KCL_JAR_DIR   also copy the jars into this directory (for a Docker stage or a plain class path)
#   MAVEN_REPO    the local Maven repository (default: ~/.m2/repository)
#   MVN           the Maven command (default: mvn)
#   KCL_FORCE=1   skip the "already installed" check
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
pom="$here/pom.xml"

py=${1:-${KCL_PYTHON:-}}
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py=python3; fi
fi
command -v "$py" >/dev/null || { echo "install.sh: no python at '$py'" >&2; exit 2; }
# Absolute, but not through symlinks: a venv's python is a symlink that must stay the venv's.
if [[ "$py" == */* ]]; then py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"; fi
mvn_cmd=${MVN:-mvn}
maven_repo=${MAVEN_REPO:-$HOME/.m2/repository}
maven_repo=${maven_repo%/}

log() { echo "kcl/install.sh: $*" >&2; }

kclpy_version=$("$py" "$here/kclpy_pom.py" kclpy-version "$pom")
mapfile -t jars < <("$py" "$here/kclpy_pom.py" jars "$pom")

# The installed amazon_kclpy/jars directory, or nothing when amazon-kclpy $kclpy_version is not installed.
installed_jar_dir() {
  (cd / && "$py" - "$kclpy_version" <<'EOF'
import importlib.metadata, importlib.util, os, sys
try:
    if importlib.metadata.version("amazon-kclpy") != sys.argv[1]:
        sys.exit(0)
except importlib.metadata.PackageNotFoundError:
    sys.exit(0)
spec = importlib.util.find_spec("amazon_kclpy")
if spec and spec.origin:
    print(os.path.join(os.path.dirname(spec.origin), "jars"))
EOF
  )
}

# Succeeds when DIR holds every jar of pom.xml (and, with "exact", nothing else ending in .jar).
has_all_jars() {
  local dir=$1 mode=${2:-} name
  [[ -d "$dir" ]] || return 1
  for name in "${jars[@]}"; do [[ -s "$dir/$name" ]] || return 1; done
  if [[ $mode == exact ]]; then
    [[ $(find "$dir" -maxdepth 1 -name '*.jar' | wc -l) -eq ${#jars[@]} ]] || return 1
  fi
}

jar_dir=$(installed_jar_dir)
installed_ok=
if [[ -z "${KCL_FORCE:-}" && -n "$jar_dir" ]] && has_all_jars "$jar_dir" exact; then installed_ok=1; fi
if [[ -n "$installed_ok" ]] && { [[ -z "${KCL_JAR_DIR:-}" ]] || has_all_jars "$KCL_JAR_DIR"; }; then
  log "amazon-kclpy $kclpy_version and its ${#jars[@]} jars are already installed"
  echo "$jar_dir"
  exit 0
fi

# 1. Resolve with Maven. copy-dependencies both fills the local repo (which setup.py reads below)
#    and gives a flat directory to compare against pom.xml.
command -v "$mvn_cmd" >/dev/null || { log "Maven ('$mvn_cmd') is not installed"; exit 2; }
copy_dir=${KCL_JAR_DIR:-$here/target/jars}
mkdir -p "$copy_dir"
log "resolving ${#jars[@]} jars with Maven into $maven_repo (and $copy_dir)"
start=$SECONDS
# (sed: Maven 3.8 prints stray colour resets even with -B.)
"$mvn_cmd" -B -q --no-transfer-progress -Dmaven.repo.local="$maven_repo" \
  -f "$pom" dependency:copy-dependencies -DoutputDirectory="$copy_dir" -DoverWriteIfNewer=true 2>&1 \
  | sed -e 's/\x1b\[[0-9;]*m//g' >&2
has_all_jars "$copy_dir" || { log "Maven did not produce every jar of $pom in $copy_dir"; exit 1; }
log "Maven done in $((SECONDS - start)) s"

# 2. Install amazon-kclpy; its setup.py reads <prefix><group path>/<artifact>/<version>/<artifact>-<version>.jar.
#    --force-reinstall only when some version is already there (wrong version, or jars incomplete);
#    --no-cache-dir then too, so a cached wheel without jars is not reused.
if [[ -z "$installed_ok" ]]; then
  pip_args=(install --no-input --disable-pip-version-check)
  if (cd / && "$py" -c 'import importlib.metadata as m; m.version("amazon-kclpy")') 2>/dev/null; then
    pip_args+=(--force-reinstall --no-deps --no-cache-dir)
  fi
  log "installing amazon-kclpy==$kclpy_version into $("$py" -c 'import sys; print(sys.prefix)')"
  start=$SECONDS
  KCL_MVN_REPO_SEARCH_URL="file://$maven_repo/" "$py" -m pip "${pip_args[@]}" "amazon-kclpy==$kclpy_version" >&2
  log "pip done in $((SECONDS - start)) s"
fi

# 3. amazon-kclpy's setup.py fetched its own list from its own pom.xml; it must be exactly ours.
jar_dir=$(installed_jar_dir)
if [[ -z "$jar_dir" ]] || ! has_all_jars "$jar_dir" exact; then
  log "amazon_kclpy/jars (${jar_dir:-not found}) does not hold exactly the ${#jars[@]} jars of $pom;"
  log "amazon-kclpy's own pom.xml and deploy/kcl/pom.xml disagree: regenerate it with kclpy_pom.py render"
  exit 1
fi
log "OK: ${#jars[@]} jars in $jar_dir"
echo "$jar_dir"
