"""`llmtune finetune`: a Hydra job on conf/finetune.yaml."""

from __future__ import annotations

HELP = "fine-tune on a task: task={tasks}, peft={peft}"


def main(args: list[str]) -> None:
    from llmtune.commands._hydra import run

    run("finetune", args)
