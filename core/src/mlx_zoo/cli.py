"""The ``mlx-zoo`` command: ``list``, ``info``, ``generate``, ``chat``.

Each subcommand lives in its own function and imports what it needs only when it runs, so
``mlx-zoo list`` stays fast and never imports a plugin it does not check.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import MlxZooError


def cmd_list(args: argparse.Namespace) -> int:
    """Installed model types -> distribution and version; conflicts and broken plugins marked."""
    from .registry import list_plugins

    rows = list_plugins(check=not args.no_check)
    if not rows:
        print("No mlx-zoo plugins installed. Try: pip install mlx-qwen2")
        return 0
    header = ("MODEL TYPE", "DISTRIBUTION", "VERSION", "MODULE", "STATUS")
    table = [header] + [(r.model_type, r.distribution, r.version, r.module, r.status) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    for r in rows:
        if r.error:
            print(f"\n{r.distribution} ({r.model_type}) is broken: {r.error}")
    conflicts = sorted({r.model_type for r in rows if r.status == "conflict"})
    if conflicts:
        print("\nConflicts: " + ", ".join(conflicts) + " are claimed by several distributions; "
              "choose with MLX_ZOO_PREFER=model_type=distribution.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Architecture, parameter count, dtype, quantization and cache layout of a checkpoint."""
    from .info import describe

    for line in describe(args.model, plugin=args.plugin):
        print(line)
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-check", action="store_true",
                   help="read entry-point metadata only; do not import plugins to check them")


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory or Hugging Face repo id")
    p.add_argument("--plugin", help="distribution to use when several claim the model_type")


COMMANDS["list"] = ("list installed model types and their plugins", _add_list, cmd_list)
COMMANDS["info"] = ("describe a checkpoint", _add_info, cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlx-zoo", description="A plugin-based model zoo for MLX")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MlxZooError as e:
        print(f"mlx-zoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
