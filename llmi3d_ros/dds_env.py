"""Where DDS traffic goes: the variables that confine it to loopback, as shell lines.

scripts/run.sh, the tests and the benchmarks set these so that no DDS packet leaves the machine
(DESIGN.md, "DDS must stay on loopback"):

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST    discovery only on this host
    FASTDDS_DEFAULT_PROFILES_FILE=<repo>/config/fastdds_loopback.xml
                                               Fast DDS: UDP on 127.0.0.1 only, no multicast
    RMW_IMPLEMENTATION=rmw_fastrtps_cpp        the middleware that profile is for

plus a ROS_DOMAIN_ID of their own. Another shell reaches the same nodes with the same four values:
`export_lines` writes them, and `scripts/run.sh env` prints the same lines for
`eval "$(scripts/run.sh env)"` (test/ros/test_dds_env.py keeps the two equal).

Pure functions of an environment mapping; nothing here imports rclpy.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

CONFINING = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")
EXPORTED = ("ROS_DOMAIN_ID", *CONFINING)
FAST_DDS = "rmw_fastrtps_cpp"


def confinement_problems(environ: Mapping[str, str]) -> list[str]:
    """Why DDS is not confined to loopback under `environ`; empty when it is.

    Confined means: discovery range LOCALHOST, a Fast DDS profile file that exists (ours
    whitelists 127.0.0.1 only) and Fast DDS as the middleware (the profile means nothing to
    another one).
    """
    problems = []
    discovery = environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
    if discovery != "LOCALHOST":
        problems.append(f"ROS_AUTOMATIC_DISCOVERY_RANGE is {discovery or 'unset'}, not LOCALHOST")
    profile = environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    if not profile:
        problems.append("FASTDDS_DEFAULT_PROFILES_FILE is unset")
    elif not Path(profile).is_file():
        problems.append(f"FASTDDS_DEFAULT_PROFILES_FILE={profile} does not exist")
    rmw = environ.get("RMW_IMPLEMENTATION", "") or FAST_DDS
    if rmw != FAST_DDS:
        problems.append(f"RMW_IMPLEMENTATION is {rmw}; the loopback profile is for {FAST_DDS}")
    return problems


def export_lines(environ: Mapping[str, str]) -> list[str]:
    """Shell lines that give another shell this environment's ROS domain and DDS settings.

    `export NAME=value` for each variable of EXPORTED that is set, `unset NAME` for the others
    (so that leftovers in the other shell do not differ), values quoted as shlex.quote does.
    """
    lines = []
    for name in EXPORTED:
        value = environ.get(name)
        lines.append(f"export {name}={shlex.quote(value)}" if value else f"unset {name}")
    return lines


def startup_lines(program: str, environ: Mapping[str, str]) -> list[str]:
    """What `program` prints first: whether DDS is confined, and how another shell joins in.

    The first line says "DDS is NOT confined to loopback" with the reasons when it is not.
    """
    problems = confinement_problems(environ)
    domain = environ.get("ROS_DOMAIN_ID") or "0"
    if problems:
        lines = [
            f"[{program}] DDS is NOT confined to loopback ({'; '.join(problems)}): discovery and "
            "data may go out on every network interface. `scripts/run.sh bringup` and "
            "`scripts/run.sh demo` confine it; on a robot, configure DDS as you normally do.",
        ]
    else:
        lines = [f"[{program}] DDS is confined to loopback, ROS domain {domain}."]
    lines.append(f"[{program}] to reach these nodes from another shell, run there:")
    lines += [f"    {line}" for line in export_lines(environ)]
    lines.append(f'[{program}] then, for example: llmi3d query "the lamp"')
    return lines
