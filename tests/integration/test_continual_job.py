"""A training run with a parameter penalty as a Task loss term (as continual stages add one),
runnable in process (test_continual.py) and as a script under torchrun:

    python -m torch.distributed.run --nproc_per_node 2 tests/integration/test_continual_job.py OUT BATCH ACCUM

The penalty is L2-SP towards the initial weights shifted by SHIFT, so its value at step 1 is
known in advance: 0.5 * LAM * SHIFT^2 * (trainable parameters).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIFT, LAM = 0.05, 1.0


def penalty_at_start(trainer) -> float:
    return 0.5 * LAM * SHIFT**2 * sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)


def run(config_dir: str, args: list[str], out: Path, batch: int, accum: int, lam: float = LAM) -> dict:
    from safetensors.torch import load_file

    from llmtune.config import _compose, register_resolvers
    from llmtune.continual.methods.penalty import penalty_term
    from llmtune.continual.stagedata import trainable_parameters
    from llmtune.extension import RunExtension
    from llmtune.job import run_job

    class Shifted(RunExtension):
        def on_trainer(self, trainer):
            params = trainable_parameters(trainer.model)
            anchors = {n: p.detach().clone() + SHIFT for n, p in params.items()}
            trainer.task.loss_terms = (penalty_term(params, anchors, None, lam),)

    register_resolvers()
    varlen, tokenizer = HERE.parent / "assets" / "ner_varlen.jsonl", HERE.parent / "assets" / "tiny_wordpiece"
    cfg = _compose(config_dir, "finetune", [
        *args, f"data.train_file={varlen}", f"data.validation_file={varlen}", f"trainer.batch_size={batch}", f"trainer.grad_accum={accum}",
        "trainer.eval_every=null", f"model.tokenizer={tokenizer}", "+model.config.hidden_dropout_prob=0",
        "+model.config.attention_probs_dropout_prob=0", "callbacks=quiet", f"output_dir={out}",
    ])
    run_job(cfg, Shifted())
    return load_file(Path(out) / "final" / "model.safetensors")


if __name__ == "__main__":
    from llmtune.paths import conf_dir

    out, batch, accum = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    run(str(conf_dir()), ["task=ner", "model=tiny_bert", "trainer.max_steps=2", "trainer.max_epochs=null", "trainer.log_every=1", "trainer.cpu=true"], out, batch, accum)
