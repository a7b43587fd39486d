"""`llmtune continual`: train on a sequence of stages and measure forgetting (llmtune/continual/).

Stdlib only at the top: `llmtune --help` imports this module to read HELP.
"""

from __future__ import annotations

HELP = "train on a sequence of tasks or domains and report forgetting (continual=METHOD); `continual compare DIR...`"
USAGE = """\
usage: llmtune continual [overrides]            (conf/continual.yaml + every finetune group and key)
       llmtune continual compare DIR DIR ... [output=PATH]

Runs the stages of a sequence one after another, each from the previous stage's weights, each in
<output_dir>/stage-<i>-<name>/ with the usual outputs; after each stage scores every stage's test
data and writes <output_dir>/report.{json,md,png}: the matrix R[i][j], average final metric, BWT,
FWT and average forgetting.

  llmtune continual continual=ewc sequence=ner-domains trainer.max_steps=60
  llmtune continual continual=replay sequence=topics continual.replay_ratio=0.5
  llmtune continual stages='[{name: a, task: ner, data: {train_file: a.conll}}, {name: b, data: {train_file: b.conll}}]'
  llmtune continual ... trainer.resume=auto      # continue an interrupted sequence (same output_dir)
  llmtune run continual-ner-ewc                  # a shipped recipe

`compare` puts the reports of several sequences (e.g. one per method) side by side: a table on
the console, and with output=PATH also PATH.md and PATH.csv.
"""


def main(args: list[str]) -> None:
    if args[:1] == ["compare"]:
        return _compare(args[1:])
    from llmtune.paths import conf_dir

    run_config(str(conf_dir()), "continual", args)


def run_config(config_dir: str, config_name: str, args: list[str]) -> None:
    """Run the sequence of a primary config (conf/continual.yaml or a continual recipe)."""
    from llmtune import config
    from llmtune.continual.runner import is_main_process, prepare, run_sequence
    from llmtune.errors import UserError
    from llmtune.ui.console import setup_logging

    if any(a in ("-m", "--multirun") for a in args):
        raise UserError("llmtune continual runs one sequence; to compare methods run one sequence per method, then `llmtune continual compare DIR...`.")
    config.register_resolvers()
    config.preflight(config_dir, config_name, args, check_dir=False)
    setup_logging(is_main_process())
    run_sequence(prepare(config_dir, config_name, args))


def _compare(args: list[str]) -> None:
    from pathlib import Path

    from llmtune.continual.report import compare
    from llmtune.errors import UserError

    dirs = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = [k for k in options if k != "output"]
    if unknown or len(dirs) < 1:
        raise UserError("usage: llmtune continual compare DIR [DIR ...] [output=PATH]; each DIR a continual output_dir with a report.json.")
    print(compare([Path(d) for d in dirs], Path(options["output"]) if "output" in options else None), end="")
