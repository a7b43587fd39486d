"""`llmtune run NAME [overrides]`: a shipped recipe (recipes/NAME.yaml) as a Hydra job."""

from __future__ import annotations

HELP = "run a shipped recipe by name, e.g. `llmtune run ner-lora trainer.max_steps=50`"
USAGE = """\
usage: llmtune run NAME [hydra overrides and flags]

Runs recipes/NAME.yaml, a finetune or pretrain config with some groups and keys set; every
override of `llmtune finetune` applies on top (`llmtune run ner-lora optimizer.lr=1e-4`).
`llmtune recipes` lists the recipes; `llmtune run NAME --help` shows Hydra's help for one.
"""


def main(args: list[str]) -> None:
    from llmtune.commands._hydra import run
    from llmtune.errors import UserError, did_you_mean
    from llmtune.paths import recipe_names

    if not args or args[0].startswith("-") or "=" in args[0]:
        raise UserError("`llmtune run` needs a recipe name first, e.g. `llmtune run ner-lora`; `llmtune recipes` lists them.")
    name, overrides = args[0], args[1:]
    if name not in recipe_names():
        raise UserError(
            f"no recipe named '{name}'.{did_you_mean(name, recipe_names())} "
            f"Available: {', '.join(recipe_names())} (`llmtune recipes` describes them)."
        )
    run(name, overrides)
