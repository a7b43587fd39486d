"""`llmtune validate finetune|pretrain|RECIPE [overrides]`: the preflight alone.

The same checks `llmtune finetune` makes before it starts (keys, types, group options, files,
cross-field rules, the run directory), and nothing more: no model, tokenizer or data is loaded
and torch is not imported, so it answers in about a second — for CI, or before queueing a job.
"""

from __future__ import annotations

HELP = "check a finetune/pretrain/recipe command line (keys, types, files) without running it"
USAGE = """\
usage: llmtune validate finetune|pretrain|RECIPE [hydra overrides] [-m]

Runs the checks `llmtune finetune|pretrain|run RECIPE` makes before anything loads — unknown
keys and options (with the closest valid one), value types, data files, cross-field rules and
the run directory — then stops. Exit 0 and one `ok:` line when the config is valid; exit 2
and one line saying what to fix when it is not. With -m and sweeps (a=1,2), every combination
is checked. Nothing is loaded or written.

examples:
  llmtune validate finetune task=ner peft=lora data.train_file=train.conll
  llmtune validate pretrain task=clm model=tiny_llama
  llmtune validate ner-lora trainer.max_steps=50
  llmtune validate finetune -m optimizer.lr=1e-4,3e-4 peft=none,lora
"""
_MULTIRUN = ("-m", "--multirun")


def main(args: list[str]) -> None:
    from llmtune import config
    from llmtune.commands._hydra import config_and_rest, config_of
    from llmtune.errors import UserError

    name, overrides = config_and_rest("validate", args, "check")
    flags = [a for a in overrides if a.startswith("-") and a not in _MULTIRUN]
    if flags:
        raise UserError(f"validate: unexpected flag '{flags[0]}'; only -m/--multirun (to check a sweep) goes with the overrides.")
    config_dir, extra = config_of(name)
    overrides = [*overrides, *extra]
    config.register_resolvers()
    config.preflight(config_dir, name, overrides)
    print(f"ok: {name} config is valid ({_summary(config_dir, name, overrides)})")


def _summary(config_dir: str, name: str, overrides: list[str]) -> str:
    """'task=..., model=..., peft=...' of the composed config (a sweep's first combination)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = []
    for ov in OverridesParser.create().parse_overrides([a for a in overrides if a not in _MULTIRUN]):
        if ov.is_discrete_sweep() and not ov.key_or_group.startswith("hydra"):
            prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(ov.type.name, "")
            lines.append(f"{prefix}{ov.key_or_group}={next(iter(ov.sweep_string_iterator()))}")
        elif not ov.is_sweep_override():
            lines.append(ov.input_line)
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name=name, overrides=lines, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    model = cfg.model.get("name_or_path") or choices.get("model")
    return f"task={cfg.task.get('name') or choices.get('task')}, model={model}, peft={choices.get('peft')}"
