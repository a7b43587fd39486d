"""The `llmtune` command: subcommands that hand over to Hydra.

Imports here stay light (stdlib, then Hydra/OmegaConf only once a subcommand needs them) so
`llmtune --help` answers instantly; torch and transformers load inside the job.
"""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: llmtune <command> [hydra overrides and flags]

commands:
  pretrain   masked-LM (task=mlm) or next-token (task=clm) pretraining
  finetune   fine-tune on a task: task={tasks}, peft={peft}
  recipes    list the shipped recipes
  run NAME   run a shipped recipe by name, e.g. `llmtune run ner-lora trainer.max_steps=50`
  bench      benchmark llmtune against HF Trainer and a plain PyTorch loop (CPU)

examples:
  llmtune finetune task=ner peft=lora
  llmtune finetune -m optimizer.lr=1e-4,3e-4 peft=none,lora
  llmtune pretrain task=clm trainer.max_steps=200
  llmtune finetune --cfg job          # print the composed config and exit
  llmtune finetune --help             # config groups, their options and Hydra flags

Every key is a Hydra override (key=value); a wrong key or option is reported with the closest
valid one. Set LLMTUNE_DEBUG=1 for full tracebacks.
"""

COMMANDS = ("pretrain", "finetune", "recipes", "run", "bench")
# Flags after which Hydra prints something and exits without running the job.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return
    if argv[0] in ("-V", "--version"):
        from llmtune import __version__

        print(f"llmtune {__version__}")
        return
    command, rest = argv[0], argv[1:]
    try:
        if command in ("pretrain", "finetune"):
            from llmtune.paths import conf_dir

            _run_hydra(command, str(conf_dir()), command, rest)
        elif command == "recipes":
            from llmtune.recipes import print_recipes

            print_recipes()
        elif command == "run":
            _run_recipe(rest)
        elif command == "bench":
            from llmtune.bench import main as bench_main

            bench_main(rest)
        else:
            from llmtune.errors import UserError, did_you_mean

            raise UserError(
                f"unknown command '{command}'.{did_you_mean(command, COMMANDS)} "
                f"Commands: {', '.join(COMMANDS)}; see `llmtune --help`."
            )
    except Exception as exc:  # noqa: BLE001 — only UserError is turned into one line
        _exit_on_user_error(exc)
        raise


def usage() -> str:
    """USAGE with the task and PEFT options read from conf/ (the folder is the registry)."""
    from llmtune.paths import group_options

    return USAGE.format(tasks="|".join(group_options("task")), peft="|".join(group_options("peft")))


def _exit_on_user_error(exc: BaseException) -> None:
    from llmtune.errors import UserError

    if isinstance(exc, UserError) and not os.environ.get("LLMTUNE_DEBUG"):
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        where = f" (rank {rank})" if rank is not None else ""
        print(f"llmtune: error{where}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def _run_recipe(rest: list[str]) -> None:
    from llmtune.errors import UserError, did_you_mean
    from llmtune.paths import conf_dir, recipe_names, recipes_dir

    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        raise UserError("`llmtune run` needs a recipe name first, e.g. `llmtune run ner-lora`; `llmtune recipes` lists them.")
    name, overrides = rest[0], rest[1:]
    if name not in recipe_names():
        raise UserError(
            f"no recipe named '{name}'.{did_you_mean(name, recipe_names())} "
            f"Available: {', '.join(recipe_names())} (`llmtune recipes` describes them)."
        )
    # Recipes are primary configs that extend /finetune or /pretrain, so conf/ goes on the
    # search path (the other way round Hydra cannot find the recipe).
    searchpath = f"hydra.searchpath=[file://{conf_dir()}]"
    _run_hydra(name, str(recipes_dir()), name, [*overrides, searchpath])


def _run_hydra(command: str, config_dir: str, config_name: str, args: list[str]) -> None:
    """Validate the overrides up front (one clear line on error), then hand over to Hydra."""
    import hydra

    from llmtune import config

    config.register_resolvers()
    if not _INFO_FLAGS.intersection(args):
        config.preflight(config_dir, config_name, args)

    # Hydra owns the rest of the command line: -m, --cfg, hydra/sweeper=..., and so on.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    saved_argv = sys.argv
    sys.argv = [f"llmtune {command}", *args]
    try:
        hydra.main(version_base=None, config_path=config_dir, config_name=config_name)(_job)()
    finally:
        sys.argv = saved_argv


def _job(cfg) -> float | None:
    """The Hydra task function: one training run. Returns the main metric for sweepers."""
    from llmtune.job import run_job

    try:
        return run_job(cfg)
    except Exception as exc:  # noqa: BLE001
        _exit_on_user_error(exc)
        raise


if __name__ == "__main__":
    main()
