"""What the Hydra verbs share (pretrain, finetune, run): where a config lives, and the hand-over
to Hydra after the preflight has checked the command line.

Stdlib only at the top: the verbs import this module when `llmtune --help` lists them.
"""

from __future__ import annotations

import os
import sys

# The primary configs in conf/; every other runnable config is a recipe in recipes/.
COMMANDS = ("finetune", "pretrain")
# Flags after which Hydra prints something and exits without running the job.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}


def config_of(name: str) -> tuple[str, list[str]]:
    """(config dir, extra overrides) of `finetune`, `pretrain` or a shipped recipe's name; the
    caller has checked that `name` is one of them."""
    from llmtune.paths import conf_dir, recipes_dir

    if name in COMMANDS:
        return str(conf_dir()), []
    # Recipes are primary configs that extend /finetune or /pretrain, so conf/ goes on the
    # search path (the other way round Hydra cannot find the recipe).
    return str(recipes_dir()), [f"hydra.searchpath=[file://{conf_dir()}]"]


def run(name: str, args: list[str]) -> None:
    """Validate the overrides up front (one clear line on error), then hand over to Hydra."""
    import hydra

    from llmtune import config

    config_dir, extra = config_of(name)
    args = [*args, *extra]
    config.register_resolvers()
    if not INFO_FLAGS.intersection(args):
        config.preflight(config_dir, name, args)

    # Hydra owns the rest of the command line: -m, --cfg, hydra/sweeper=..., and so on.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    saved_argv = sys.argv
    sys.argv = [f"llmtune {name}", *args]
    try:
        hydra.main(version_base=None, config_path=config_dir, config_name=name)(_job)()
    finally:
        sys.argv = saved_argv


def _job(cfg) -> float | None:
    """The Hydra task function: one training run. Returns the main metric for sweepers."""
    from llmtune.cli import _exit_on_user_error
    from llmtune.job import run_job

    try:
        return run_job(cfg)
    except Exception as exc:  # noqa: BLE001
        _exit_on_user_error(exc)
        raise
