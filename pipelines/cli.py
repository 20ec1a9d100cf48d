"""The ``deepmir`` command line.

Each subcommand lives in ``pipelines/commands/<name>.py`` and provides two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand is used, so ``deepmir --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from deepmir_tasks.codehash import code_version
from deepmir_tasks.io import InputError

#: subcommand -> (module under pipelines.commands, one-line help)
COMMANDS = {
    "demo": ("demo", "simulate a demo subject and run the whole pipeline on it"),
    "run": ("run", "BIDS-App: run the pipeline on a BIDS dataset (participant / group level)"),
    "simulate": ("simulate", "simulate a BIDS cohort of T2w/SWI/QSM with known lesions"),
    "train": ("train", "train a DEEPMIR model on a BIDS dataset with annotations"),
    "evaluate": ("evaluate", "score predicted lesions against annotations, lesion by lesion"),
    "submit": ("submit", "submit a cohort to SLURM as a job array"),
    "review": ("review", "review the model's candidates in a browser; export the decisions as annotations"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmir",
        description="DEEPMIR: cerebral microbleeds and iron deposits from T2w, SWI and QSM.",
    )
    parser.add_argument("--version", action="version", version=f"deepmir {code_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily below, only for the subcommand in use.
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name = next((a for a in argv if not a.startswith("-")), None)
    module = None
    if name in COMMANDS:
        module = importlib.import_module(f"pipelines.commands.{COMMANDS[name][0]}")
        module.add_arguments(_subparser(parser, name))
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        from pipelines.errors import quiet_pydra_failures

        quiet_pydra_failures()
    try:
        return int(module.run(args) or 0)
    except InputError as err:
        print(f"deepmir {name}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused: full disk, read-only, not a folder...
        print(f"deepmir {name}: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"deepmir {name}: interrupted", file=sys.stderr)
        return 130


def os_error_line(err: OSError) -> str:
    """One line for a file-system refusal: the path, the problem and, for a full disk, the space
    free there and what a run needs."""
    import errno
    import shutil

    where = err.filename or "?"
    line = f"{where}: {err.strerror or err}"
    if err.errno == errno.ENOSPC:
        from pipelines.run import MIN_FREE_BYTES

        probe = Path(where) if err.filename else Path.cwd()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        line += (f" ({free / 1e6:.0f} MB free there; a run needs at least {MIN_FREE_BYTES / 1e9:.1f} GB, about "
                 "0.1 GB per subject; free space and run again: finished subjects resume from the cache)")
    return line


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices[name]
    raise KeyError(name)


if __name__ == "__main__":
    sys.exit(main())
