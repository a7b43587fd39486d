"""`python -m llmtune ...` — what `accelerate launch -m llmtune` and `torchrun -m llmtune` run."""

from llmtune.cli import main

if __name__ == "__main__":
    main()
