"""`flywheel` command line: every subcommand composes the Hydra config and takes overrides.

Usage: `flywheel <command> [options] [key=value overrides...]`. Subcommands live in
`flywheel/commands/<name>.py`, each exposing `add_parser(subparsers)`; the parser sets `func(args, cfg)`.
Heavy imports happen inside the commands so `flywheel --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module name in flywheel.commands -> registers one or more subcommands
COMMAND_MODULES = ["run", "db", "neo", "workers", "train", "eval", "bench", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flywheel",
        description="Self-improvement flywheel for humanoid robots (imagine-then-act). "
        "Append Hydra overrides after the options, e.g. `flywheel run preset=demo db.url=postgresql://...`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"flywheel.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flywheel.commands.{name}":
                continue  # that command is not built yet
            raise
        mod.add_parser(sub)
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Hydra overrides are the `key=value` words that are not option values (`--x=y` stays an option)."""
    opts, overrides = [], []
    for word in argv:
        if "=" in word and not word.startswith("-"):
            overrides.append(word)
        else:
            opts.append(word)
    return opts, overrides


def main(argv: list[str] | None = None) -> int:
    from flywheel.errors import user_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    opts, overrides = split_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(opts)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from flywheel.compose import compose

        cfg = compose(overrides)
        rc = args.func(args, cfg)
        return int(rc or 0)
    except user_errors() as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flywheel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
