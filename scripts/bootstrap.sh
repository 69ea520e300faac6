#!/usr/bin/env bash
# Set up everything llmi3d_ros needs in a virtual environment, idempotently.
#
#   scripts/bootstrap.sh            # creates or updates ./.venv (override with LLMI3D_VENV=/path)
#
# Steps: create the venv, install pinned Python and ROS 2 (PyPI wheel) dependencies, build and install
# the interface packages msg/vision_msgs and msg/tf2_msgs (each only when the system has none) and
# msg/llmi3d_msgs into the venv, install this package editable. A stamp of the inputs makes a second
# run with nothing changed a quick check. Full log: <venv>/bootstrap.log.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLMI3D_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
LOG="$VENV/bootstrap.log"
STAMP="$VENV/.llmi3d-bootstrap-stamp"
START=$SECONDS
STEP="start"

say() { printf '[bootstrap %4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() {
  printf '\n[bootstrap] FAILED during: %s\n' "$STEP" >&2
  if [ -f "$LOG" ]; then
    printf '[bootstrap] last lines of %s:\n' "$LOG" >&2
    tail -n 25 "$LOG" >&2
  fi
  exit 1
}
trap fail ERR

inputs_hash() {
  (
    cd "$REPO"
    "$PYTHON" --version 2>&1
    cat requirements.txt requirements-nodeps.txt setup.py setup.cfg pyproject.toml package.xml \
      scripts/bootstrap.sh
    find msg -type f | LC_ALL=C sort | xargs cat
  ) | sha256sum | cut -d' ' -f1
}

# what a working environment imports (checked before skipping the set-up and after it)
ENV_IMPORTS="import rclpy, vision_msgs.msg, tf2_msgs.msg, llmi3d_msgs.srv, llmi3d_core, llmi3d_ros"

check_env() {
  "$VENV/bin/python" -c "$ENV_IMPORTS" >/dev/null 2>&1
}

STEP="checking Python"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)' 2>/dev/null; then
  echo "[bootstrap] $PYTHON is missing or older than 3.10; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
WANT="$(inputs_hash)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && check_env; then
  say "environment $VENV is up to date"
  exit 0
fi

STEP="creating the virtual environment"
say "1/5 $STEP at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
: >"$LOG"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip >>"$LOG" 2>&1

STEP="installing pinned dependencies (requirements.txt)"
say "2/5 $STEP; progress in $LOG"
"${PIP[@]}" install --progress-bar off -r "$REPO/requirements.txt" >>"$LOG" 2>&1
"${PIP[@]}" install --progress-bar off --no-deps -r "$REPO/requirements-nodeps.txt" >>"$LOG" 2>&1

build_interfaces() {
  local pkg="$1"
  local build="$VENV/build/$pkg"
  STEP="building interface package $pkg"
  say "    $STEP"
  (
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    cmake -S "$REPO/msg/$pkg" -B "$build" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build "$build" -j "$(nproc)"
    cmake --install "$build"
  ) >>"$LOG" 2>&1
}

STEP="building interface packages"
say "3/5 $STEP (about 15 s each)"
command -v cmake >/dev/null || { echo "[bootstrap] cmake not found: apt-get install cmake" >&2; exit 1; }
command -v gcc >/dev/null || { echo "[bootstrap] gcc not found: apt-get install build-essential" >&2; exit 1; }
for pkg in vision_msgs tf2_msgs; do  # ours only where the system has none
  if [ -d "$VENV/share/$pkg" ] || ! "$VENV/bin/python" -c "import $pkg.msg" >/dev/null 2>&1; then
    build_interfaces "$pkg"
  else
    say "    $pkg is already provided by the system; not building ours"
  fi
done
build_interfaces llmi3d_msgs

STEP="installing llmi3d_ros (editable)"
say "4/5 $STEP"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$REPO" >>"$LOG" 2>&1

STEP="checking the environment"
say "5/5 $STEP"
"$VENV/bin/python" -c "$ENV_IMPORTS" >>"$LOG" 2>&1
echo "$WANT" >"$STAMP"
say "done: $VENV"
