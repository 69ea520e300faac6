"""The `llmi3d` command: data generation, training, evaluation, and a client of the node.

    llmi3d data synth --out data/synth --num-images 500 --seed 0
    llmi3d train --config config/train/tiny_synth.yaml
    llmi3d eval --checkpoint runs/tiny/best --data data/synth --split test
    llmi3d query "the lamp"                     # a running llmi3d_node (needs ROS 2)

Each subcommand lives in the module that owns the concept and is imported only when used, so
`llmi3d --help` stays fast. A module registers itself with two functions:
`add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llmi3d_core.errors import Llmi3dError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("llmi3d_core.data.cli", "make the synthetic benchmark, convert datasets and bags"),
    "train": ("llmi3d_core.train", "train a model from a YAML config"),
    "eval": ("llmi3d_core.evaluate", "evaluate a checkpoint and draw a gallery"),
    "query": ("llmi3d_ros.query_cli", "ask a running llmi3d_node (needs ROS 2)"),
}
# `query` talks to a running node, so it needs rclpy. Its module lives in llmi3d_ros and is named
# here only as a string, imported when `llmi3d query` runs: llmi3d_core itself never imports ROS
# (test/test_setup.py checks it), so data, training and evaluation still work without ROS, and
# where ROS is missing `llmi3d query` says so instead of the whole command failing to start.
NEEDS_ROS = {"query"}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the subcommand named in argv."""
    parser = argparse.ArgumentParser(prog="llmi3d", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        if name == wanted:
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                if name not in NEEDS_ROS:
                    raise
                parser.exit(
                    2,
                    f"llmi3d {name}: needs ROS 2 (rclpy and the llmi3d_msgs interfaces), which "
                    f"this Python ({sys.executable}) cannot import: {err}. scripts/bootstrap.sh "
                    "installs them into .venv; in a ROS 2 workspace, source install/setup.bash "
                    "first.\n",
                )
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmi3d` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args))
    except Llmi3dError as err:
        print(f"llmi3d {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmi3d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
