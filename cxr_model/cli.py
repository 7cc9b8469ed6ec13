"""The ``cxr`` command.

Subcommands are registered through the ``cxr.commands`` entry-point group (see
pyproject.toml): each entry is a function ``register(subparsers)`` that adds
its parser and sets ``func``. This keeps the dispatcher free of imports from
training or serving, which may pull in Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata


def register_model_card(subparsers) -> None:
    parser = subparsers.add_parser("model-card", help="a checkpoint's model card as MODEL_CARD.md (or JSON)")
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument(
        "--format",
        choices=["markdown", "json"],
        default="markdown",
        help="MODEL_CARD.md text or the card's JSON (default: %(default)s)",
    )
    parser.add_argument("--out", help="write here, e.g. CHECKPOINT/MODEL_CARD.md (default: print to stdout)")
    parser.set_defaults(func=_model_card)


def _model_card(args) -> int:
    from cxr_model.checkpoint import read_card
    from cxr_model.model_card_md import render_model_card

    card = read_card(args.checkpoint)
    text = json.dumps(card.to_dict(), indent=2, sort_keys=True) if args.format == "json" else render_model_card(card)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    else:
        print(text)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="CXR Serve: chest X-ray triage models")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(metadata.entry_points(group="cxr.commands"), key=lambda e: e.name):
        entry.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
