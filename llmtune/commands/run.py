"""`llmtune run NAME [overrides]`: a shipped recipe (recipes/NAME.yaml) as a Hydra job."""

from __future__ import annotations

HELP = "run a shipped recipe by name, e.g. `llmtune run ner-lora trainer.max_steps=50`"
USAGE = """\
usage: llmtune run NAME [hydra overrides and flags]

Runs recipes/NAME.yaml, a finetune, pretrain or continual config with some groups and keys set;
every override of that command applies on top (`llmtune run ner-lora optimizer.lr=1e-4`).
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
    from llmtune.commands._hydra import COMMANDS
    from llmtune.recipes import command_of

    command = command_of(name)
    if command in COMMANDS:
        run(name, overrides)
    else:  # a recipe of another primary config (continual): its verb runs it
        import importlib

        from llmtune.commands._hydra import config_of

        config_dir, extra = config_of(name)
        importlib.import_module(f"llmtune.commands.{command}").run_config(config_dir, name, [*overrides, *extra])
