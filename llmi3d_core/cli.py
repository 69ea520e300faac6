"""The `llmi3d` command: data generation, training, evaluation.

    llmi3d data synth --out data/synth --num-images 500 --seed 0
    llmi3d train --config config/train/tiny_synth.yaml
    llmi3d eval --checkpoint runs/tiny/best --data data/synth --split test

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
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the subcommand named in argv."""
    parser = argparse.ArgumentParser(prog="llmi3d", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
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
