"""The ``monai-cir`` command. Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)``; heavy imports happen inside the command, so ``monai-cir --help`` is fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]

# sub-command modules, in the order a user meets them
COMMAND_MODULES = ("demo", "dicomize", "index", "search", "serve", "evaluate", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-cir",
        description="Composed vision-language retrieval of skin-cancer cases (image + clinical text -> similar confirmed cases).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The default encoders load from installed packages: no model hub unless the user asks for one.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    args.command_line = shlex.join(["monai-cir", *given])  # what a results file records as the command that reruns it
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from ..config import quiet_chatty_loggers

        quiet_chatty_loggers()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input from the user: one clear line, no traceback.
        print(f"monai-cir {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the output's reader stopped reading (`monai-cir index info ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's own flush at exit would raise again)
        return 0
    except OSError as err:
        # a file or folder the system refuses (permissions, a file where a folder should be, a full disk): one line
        # that names it; --verbose keeps the traceback for a report
        if args.verbose:
            raise
        print(f"monai-cir {args.command}: error: {err} (run with --verbose for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
