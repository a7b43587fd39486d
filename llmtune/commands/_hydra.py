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


def config_and_rest(verb: str, args: list[str], doing: str) -> tuple[str, list[str]]:
    """For verbs that take a config first (`llmtune VERB finetune|pretrain|RECIPE ...`): the
    config's name and the arguments after it; one line when the first argument names none.
    `doing` says what the verb does with it, for the message ("check", "inspect")."""
    from llmtune.errors import UserError, did_you_mean
    from llmtune.paths import recipe_names

    if not args or args[0].startswith("-") or "=" in args[0]:
        raise UserError(f"`llmtune {verb}` needs what to {doing} first: finetune, pretrain or a recipe name, e.g. `llmtune {verb} finetune task=ner`.")
    names = [*COMMANDS, *recipe_names()]
    if args[0] not in names:
        raise UserError(f"{verb}: no command or recipe named '{args[0]}'.{did_you_mean(args[0], names)} Choose one of {', '.join(names)}.")
    return args[0], args[1:]


def run(name: str, args: list[str]) -> None:
    """Validate the overrides up front (one clear line on error), then hand over to Hydra."""
    import hydra

    from llmtune import config

    config_dir, extra = config_of(name)
    args = [*args, *extra]
    _check_sweeper_installed(name, args)
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
        if not _record_failed_sweep_job(exc):
            _exit_on_user_error(exc)
        raise


def _record_failed_sweep_job(exc: Exception) -> bool:
    """In a multirun: print a UserError's line, record it for `llmtune sweep-report` in
    <sweep dir>/errors/<job>.json (not in the job's directory, which a refused job must leave
    as it was) and return True, so the job fails without ending the sweep (Hydra goes on
    with the next job and raises the first failure at the end). False outside a multirun."""
    import json
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from llmtune.errors import UserError

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    hydra_cfg = HydraConfig.get()
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    line = line if isinstance(exc, UserError) else f"{type(exc).__name__}: {line}"
    if isinstance(exc, UserError):
        print(f"llmtune: error (job {hydra_cfg.job.num}): {line}", file=sys.stderr)
    errors = Path(hydra_cfg.sweep.dir) / "errors"
    errors.mkdir(parents=True, exist_ok=True)
    record = {"job": hydra_cfg.job.num, "error": line, "overrides": list(hydra_cfg.overrides.task)}
    (errors / f"{hydra_cfg.job.num}.json").write_text(json.dumps(record, indent=1) + "\n")
    return True


def _check_sweeper_installed(name: str, args: list[str]) -> None:
    """A recipe or command line that picks the Optuna sweeper needs its plugin, an extra:
    say how to install it in one line, rather than Hydra's "could not find hydra/sweeper/optuna"."""
    from llmtune.errors import UserError

    wanted = "hydra/sweeper=optuna" in args
    if name not in COMMANDS:
        from llmtune.paths import recipes_dir

        text = (recipes_dir() / f"{name}.yaml").read_text()
        wanted = wanted or any(line.split("#")[0].replace(" ", "").endswith("hydra/sweeper:optuna") for line in text.splitlines())
    if wanted and not optuna_sweeper_installed():
        raise UserError(f"`{name}` uses the Optuna sweeper (hydra/sweeper=optuna), which is not installed; "
                        "install it with `pip install 'llmtune[optuna]'`.")


def optuna_sweeper_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
