"""`llmtune inspect finetune|pretrain|RECIPE [overrides] [inspect.KEY=VALUE]`: the data as
training will see it, before training (llmtune.inspecting)."""

from __future__ import annotations

from pathlib import Path

from llmtune.commands._args import describe

HELP = "show preprocessed examples, lengths, truncation, labels, padding and time per epoch before training"
PREFIX = "inspect."  # no config has an `inspect` key, so these never clash with an override
KEYS = {
    "inspect.n": (int, 3, "training examples to show token by token"),
    "inspect.steps": (int, 3, "optimizer steps to time (after 1 warm-up) for the time estimate; 0: no model is loaded"),
    "inspect.png": (Path, Path("inspect-lengths.png"), "where the length histogram PNG goes; none: no PNG"),
}
USAGE = f"""\
usage: llmtune inspect finetune|pretrain|RECIPE [hydra overrides] [inspect.KEY=VALUE ...]

Loads the data and tokenizer exactly as `llmtune finetune|pretrain|run RECIPE` would with the
same overrides, then shows: N training examples token by token with their labels (coloured per
label, subwords as the tokenizer spells them, ignored positions dimmed), the length histogram
(terminal bars and a PNG), the truncation rate at task.max_length, the label balance, padding
under the chosen batching, steps per epoch, and an estimated time per epoch from a few timed
optimizer steps on this machine. Nothing is trained and output_dir is never created.

arguments:
{describe(KEYS)}

examples:
  llmtune inspect finetune task=ner peft=lora
  llmtune inspect finetune task=classification data.train_file=train.csv task.max_length=64 inspect.n=5
  llmtune inspect pretrain task=clm model=tiny_llama inspect.steps=0 inspect.png=lengths.png
"""


def main(args: list[str]) -> None:
    from llmtune import config
    from llmtune.commands._args import parse
    from llmtune.commands._hydra import config_and_rest, config_of
    from llmtune.errors import UserError

    name, rest = config_and_rest("inspect", args, "inspect")
    flags = [a for a in rest if a.startswith("-")]
    if flags:
        raise UserError(f"inspect: unexpected flag '{flags[0]}'; inspect takes overrides and inspect.KEY=VALUE only (one config, no -m sweep).")
    own = parse([a for a in rest if a.startswith(PREFIX)], KEYS, verb="inspect")
    if own["inspect.n"] < 0 or own["inspect.steps"] < 0:
        raise UserError("inspect: inspect.n and inspect.steps must be 0 or more.")
    png = None if str(own["inspect.png"]).lower() in ("none", "null", "") else own["inspect.png"]
    config_dir, extra = config_of(name)
    overrides = [*(a for a in rest if not a.startswith(PREFIX)), *extra]
    _refuse_sweeps(overrides)
    config.register_resolvers()
    cfg = config.preflight(config_dir, name, overrides, check_dir=False)

    from llmtune.inspecting import report
    from llmtune.ui.console import setup_logging

    setup_logging(is_main=True)
    report(cfg, own["inspect.n"], own["inspect.steps"], png)


def _refuse_sweeps(overrides: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from llmtune.errors import UserError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return  # preflight reports it in its one line
    for ov in parsed:
        if ov.is_sweep_override() and not ov.key_or_group.startswith("hydra"):
            raise UserError(f"inspect: {ov.input_line} is a sweep; inspect looks at one config: give {ov.key_or_group} one value.")
