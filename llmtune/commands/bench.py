"""`llmtune bench`: llmtune against HF Trainer and a plain PyTorch loop (llmtune/bench/).

Its flags are argparse's (`llmtune bench --help` lists them), as the benchmark is a developer
tool whose options mirror the baselines' rather than a config tree.
"""

from __future__ import annotations

HELP = "benchmark llmtune against HF Trainer and a plain PyTorch loop (CPU)"


def main(args: list[str]) -> None:
    from llmtune.bench import main as bench_main

    bench_main(args)
