#!/usr/bin/env bash
# The two README commands: set everything up, then run the demo or the tests.
#
#   scripts/run.sh demo [args]      # node + synthetic camera + queries from a real client (llmi3d_demo)
#   scripts/run.sh test [args]      # the test suite (pytest args pass through)
#
# and two helpers for working with a running demo or bringup:
#
#   scripts/run.sh bringup [args]   # llmi3d_bringup (llmi3d_bringup --help), DDS confined as here
#   eval "$(scripts/run.sh env)"    # in another shell: the exports that reach the last demo/bringup
#   scripts/run.sh env 42           # the same exports for ROS domain 42
#
# DDS is confined to loopback here (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a Fast DDS profile that
# whitelists 127.0.0.1), so nothing leaves the machine. On a robot, configure DDS as you normally do.
# `demo` and `bringup` record their ROS domain in out/.ros_domain_id for `env`; the lines `env`
# prints are the ones llmi3d_ros/dds_env.py:export_lines writes (a test keeps them equal).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLMI3D_VENV:-$REPO/.venv}"
DOMAIN_RECORD="${LLMI3D_DOMAIN_RECORD:-$REPO/out/.ros_domain_id}"

usage() { echo "usage: $0 demo|test|bringup [args...] | env [DOMAIN_ID]" >&2; exit 2; }
[ $# -ge 1 ] || usage
what="$1"; shift

random_domain() { echo $(( (RANDOM % 100) + 1 )); }

confine() {
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
  export FASTDDS_DEFAULT_PROFILES_FILE="$REPO/config/fastdds_loopback.xml"
  export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
}

# shlex.quote's rule, so that these lines equal Python's export_lines
quote() {
  local unsafe='[^A-Za-z0-9_@%+=:,./-]'
  if [ -z "$1" ]; then
    printf "''"
  elif [[ "$1" =~ $unsafe ]]; then
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  else
    printf '%s' "$1"
  fi
}

if [ "$what" = env ]; then
  [ $# -le 1 ] || usage
  if [ $# -eq 1 ]; then
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -le 101 ] || { echo "$0 env: bad domain id '$1'" >&2; exit 2; }
    domain="$1"
  elif [ -f "$DOMAIN_RECORD" ] && read -r domain by pid started <"$DOMAIN_RECORD"; then
    state=ended; kill -0 "$pid" 2>/dev/null && state=running
    echo "# ROS domain $domain: the last 'scripts/run.sh $by' (pid $pid, $state, started $started)" >&2
  elif [ -n "${ROS_DOMAIN_ID:-}" ]; then
    domain="$ROS_DOMAIN_ID"
    echo "# ROS domain $domain: ROS_DOMAIN_ID of this shell (no demo or bringup recorded)" >&2
  else
    domain="$(random_domain)"
    echo "# ROS domain $domain: a new random one (no demo or bringup recorded)" >&2
  fi
  confine
  for name in ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE FASTDDS_DEFAULT_PROFILES_FILE RMW_IMPLEMENTATION; do
    if [ "$name" = ROS_DOMAIN_ID ]; then value="$domain"; else value="${!name}"; fi
    echo "export $name=$(quote "$value")"
  done
  exit 0
fi

case "$what" in demo|test|bringup) ;; *) usage ;; esac

"$REPO/scripts/bootstrap.sh"

confine
# A domain of its own for each run, so parallel runs on one machine do not see each other.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(random_domain)}"
export PYTHONUNBUFFERED=1

cd "$REPO"
case "$what" in
  demo|bringup)
    # exec keeps this shell's pid: `env` can tell whether the recorded run is still going
    mkdir -p "$(dirname "$DOMAIN_RECORD")"
    echo "$ROS_DOMAIN_ID $what $$ $(date +%Y-%m-%dT%H:%M:%S)" >"$DOMAIN_RECORD"
    exec "$VENV/bin/llmi3d_$what" "$@"
    ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
esac
