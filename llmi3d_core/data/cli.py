"""`llmi3d data ...`: make, convert and inspect grounding datasets (docs/dataset_format.md).

    llmi3d data synth --out data/synth --num-images 500 --seed 0
    llmi3d data contact-sheet data/synth --out sheet.png

Sub-subcommands come from the DATA_COMMANDS registry below, exactly like the top-level
llmi3d_core/cli.py: each entry names a module that defines `add_arguments(parser)` and
`run(args) -> int`. Adding a command is one line in DATA_COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib

# sub-subcommand -> (module defining add_arguments/run, one-line help)
DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("llmi3d_core.data.synth.generator", "generate the IG3D-Synth benchmark"),
    "contact-sheet": ("llmi3d_core.data.contact_sheet", "PNG of samples with their 3D boxes"),
    # --- converters of real data (module with add_arguments/run; one line each) -------------
    "omni3d": ("llmi3d_core.data.convert.omni3d", "convert Omni3D JSON to our format"),
    "mono3drefer": ("llmi3d_core.data.convert.mono3drefer", "convert Mono3DRefer to our format"),
    "from-bag": (
        "llmi3d_core.data.convert.bag",
        "convert labelled frames of a rosbag2 to our format",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data sub-subcommands to the `llmi3d data` parser.

    Each command's module is imported here, so a module keeps heavy imports (torch) inside its
    functions to keep `llmi3d data --help` fast.
    """
    subparsers = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    for name, (module_name, help_text) in DATA_COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(sub)
        sub.set_defaults(_data_run=module.run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the run function of the chosen sub-subcommand."""
    return int(args._data_run(args))
