"""Continual learning: train on a sequence of stages (tasks or domains) and measure forgetting.

`llmtune continual` (conf/continual.yaml) runs the stages one after another in one command,
each from the previous stage's weights, each as an ordinary training run in its own directory
(<out>/stage-<i>-<name>/: config.yaml, metrics.json, checkpoints/, final/). After each stage the
model is scored on every stage's test data; report.py turns the scores into the forgetting
report. A method (conf/continual/<name>.yaml, llmtune/continual/methods/<name>.py) adds what it
needs to each stage's run through llmtune.extension.RunExtension and the Task's generic
training additions (loss_terms, train_mixers): the engine never names a method.

    sequence.py    the stages: a built-in sequence or the user's list, one config per stage
    transfer.py    carrying labels and weights from one stage to the next (heads grow)
    runner.py      the stage runs, their evaluation, resume of an interrupted sequence
    report.py      the accuracy matrix, BWT/FWT/forgetting, tables, heatmap, side by side
    methods/       naive, replay, ewc, l2sp, lwf, adapters
"""
