"""sbatch's command line: splitting user options safely, reading one back, submitting a script."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["parse_sbatch_args", "option_value", "run_sbatch"]


def parse_sbatch_args(sbatch_args: str | Sequence[str], refuse: Sequence[str] = ()) -> list[str]:
    """Split sbatch options as a shell would (``shlex.split``), without running a shell.

    Options named in ``refuse`` (e.g. ``--wrap``, given as ``--opt``, ``--opt=v`` or ``-o v``)
    raise :class:`ValueError` naming the option.
    """
    args = shlex.split(sbatch_args) if isinstance(sbatch_args, str) else [str(a) for a in sbatch_args]
    for arg in args:
        name = arg.split("=", 1)[0]
        short = arg[:2] if re.match(r"^-[A-Za-z]", arg) else None
        for bad in refuse:
            if name == bad or (len(bad) == 2 and short == bad):
                raise ValueError(f"sbatch option {arg!r} is set by DEEPMIR itself and cannot be passed")
    return args


def option_value(args: list[str], short: str, long: str) -> str | None:
    """The value of ``-x V``, ``-xV``, ``--long=V`` or ``--long V`` in an argv list (last wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == short or arg == long:
            value = args[i + 1] if i + 1 < len(args) else None
        elif arg.startswith(long + "="):
            value = arg[len(long) + 1:]
        elif arg.startswith(short) and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
    return value


def run_sbatch(argv: list[str]) -> str:
    """Run sbatch (no shell) and return the job id; RuntimeError with sbatch's message otherwise."""
    if shutil.which(argv[0]) is None:
        raise RuntimeError(f"{argv[0]} not found on PATH: is this a SLURM login node?")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    match = re.match(r"\s*(\d+)", proc.stdout)
    if proc.returncode or not match:
        raise RuntimeError(f"sbatch failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return match.group(1)
