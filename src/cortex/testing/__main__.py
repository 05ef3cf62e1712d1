"""Command line: ``python -m cortex.testing build OUT [--trained | --family NAME]
[--context-length N]``.

Writes a tiny model folder to OUT (which must not exist yet, or be empty) and prints its path.
``--family`` builds that model family's trained model (``cortex.testing.families``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cortex.testing.families import FAMILIES, build_family_model
from cortex.testing.model import DEFAULT_CONTEXT_LENGTH, build_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cortex.testing", description="Build tiny local models for tests."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write a tiny model folder")
    build.add_argument("out", type=Path, help="folder to create (must not exist, or be empty)")
    build.add_argument(
        "--trained",
        action="store_true",
        help="fit the weights so greedy decoding reproduces the fixtures",
    )
    build.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        help="build this model family's trained model (implies --trained)",
    )
    build.add_argument(
        "--context-length",
        type=int,
        default=DEFAULT_CONTEXT_LENGTH,
        help=f"max_position_embeddings of the model (default {DEFAULT_CONTEXT_LENGTH})",
    )
    build.add_argument(
        "--head-dim",
        type=int,
        default=16,
        help="attention head size (default 16; vLLM's CPU attention needs 32 or more, e.g. 64)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.context_length < 1:
        _parser().error("--context-length must be positive")
    try:
        if args.family is not None:
            path = build_family_model(args.out, args.family, context_length=args.context_length)
        else:
            path = build_model(
                args.out,
                trained=args.trained,
                context_length=args.context_length,
                head_dim=args.head_dim,
            )
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
