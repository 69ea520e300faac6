#!/usr/bin/env bash
# The two README commands: set everything up, then run the demo or the tests.
#
#   scripts/run.sh demo [args]   # node + synthetic camera + queries from a real client (llmi3d_demo)
#   scripts/run.sh test [args]   # the test suite (pytest args pass through)
#
# DDS is confined to loopback here (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a Fast DDS profile that
# whitelists 127.0.0.1), so nothing leaves the machine. On a robot, configure DDS as you normally do.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLMI3D_VENV:-$REPO/.venv}"

usage() { echo "usage: $0 demo|test [args...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
what="$1"; shift

"$REPO/scripts/bootstrap.sh"

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$REPO/config/fastdds_loopback.xml"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# A domain of its own for each run, so parallel runs on one machine do not see each other.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export PYTHONUNBUFFERED=1

cd "$REPO"
case "$what" in
  demo) exec "$VENV/bin/llmi3d_demo" "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  *) usage ;;
esac
