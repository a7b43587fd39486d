"""RunExtension: a caller's adjustments to one training run, at fixed points of its construction.

`job.run_job(cfg, extension)` hands it to the builders, which call each hook once, in this
order; every hook's default changes nothing, so a plain run is the same with or without one.
It exists so that a sequence of runs (llmtune.continual) can carry weights, labels and
training additions from one run to the next without the engine naming what it does.

    on_data(task, raw)       after task.setup, before the model's config is checked or a
                             tokenizer loads: e.g. keep the label ids an earlier run used
    on_model(model, task)    after the PEFT method is applied, before the optimizer is built:
                             e.g. load an earlier run's weights; returns the model to train
    on_trainer(trainer)      before fit(): e.g. set task.loss_terms / task.train_mixers
                             (llmtune.tasks.base), which see the built tokenizer and data

A resumed run calls them too, before its checkpoint is loaded: what they set must not depend
on the step a run resumes at.

`keeps_processes`: a run started by torchrun/accelerate launch ends the process group when it
finishes (else torchrun reports an abort at exit). A caller that runs more runs in the same
processes sets it, and ends the group itself (job.end_processes) after the last.
"""

from __future__ import annotations


class RunExtension:
    keeps_processes = False

    def on_data(self, task, raw) -> None:
        """After `task.setup(raw)`."""

    def on_model(self, model, task):
        """After the PEFT method is applied; returns the model to train."""
        return model

    def on_trainer(self, trainer) -> None:
        """When the Trainer is built, before fit()."""
