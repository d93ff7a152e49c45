"""massmech: massive values in the queries and keys of RoPE self-attention.

Studies, one command each (their flags come from their configs): analyze (the main job),
ablation (was sweep), quant (was quant-study), twins, heads, shift, attribute (attention logits
by RoPE band); reproduce runs every study the claim ledger reads, then the figures, the ledger
and the docs. Tools: doctor, ablate (one ablation), quantize (one quantized variant), compare,
report, cells, models.
`massmech COMMAND --help` describes each.

Errors massmech raises on purpose print one line and exit with status 2; anything else is a
bug and shows its traceback (--debug shows it always).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import warnings

from massmech.cli.commands import ADD
from massmech.cli.studies import add_reproduce, add_study_commands
from massmech.errors import MassmechError


class _HELP(argparse.HelpFormatter):
    """Help that shows every real default (not the None/False of optional flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and "(default" not in text and action.option_strings and not any(
            action.default is x for x in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``massmech`` parser. ``only``: derive config flags for this subcommand alone (so
    ``massmech --help`` and the other commands import no study config)."""
    p = argparse.ArgumentParser(prog="massmech", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"massmech {importlib.metadata.version('massmech')}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_study_commands(sub, _HELP, only)
    add_reproduce(sub, _HELP)
    for add in ADD:
        add(sub, _HELP)
    return p


def _command(argv: list[str]) -> str:
    """The subcommand named in ``argv`` (its first word that is not a flag), or ``""``."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only=_command(argv)).parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:  # library deprecation chatter is not the user's business
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
            return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # Ctrl-C: what was saved, not a traceback
        if args.debug:
            raise
        print(f"massmech {args.command}: {err or 'interrupted: finished cells are kept; rerun the same command to resume'}",
              file=sys.stderr)
        return 130
    except MassmechError as err:  # anything else is a bug: its traceback is shown
        if args.debug:
            raise
        print(f"massmech {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
