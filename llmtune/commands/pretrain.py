"""`llmtune pretrain`: a Hydra job on conf/pretrain.yaml (task=mlm or task=clm)."""

from __future__ import annotations

HELP = "masked-LM (task=mlm) or next-token (task=clm) pretraining"


def main(args: list[str]) -> None:
    from llmtune.commands._hydra import run

    run("pretrain", args)
