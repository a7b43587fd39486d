"""`llmtune recipes`: the shipped recipes, their descriptions and the commands they stand for."""

from __future__ import annotations

HELP = "list the shipped recipes"
USAGE = """\
usage: llmtune recipes

Lists recipes/: each recipe's name, description and the `llmtune finetune|pretrain ...` command
it stands for. Run one with `llmtune run NAME [overrides]`.
"""


def main(args: list[str]) -> None:
    from llmtune.commands._args import parse
    from llmtune.recipes import print_recipes

    parse(args, {}, verb="recipes")
    print_recipes()
