"""`llmtune compare`: every method on the same task, model, data and step budget; one row each."""

from __future__ import annotations

HELP = "compare PEFT methods on one task over seeds: metric ± std, trainable %, memory, speed"
USAGE = """\
usage: llmtune compare [task=...] [methods=[none,lora,bitfit]] [seeds=[1,2,3]] [finetune overrides ...]
       llmtune compare runs=[DIR,DIR,...] [output_dir=DIR]

Trains every method of methods= with every seed of seeds= — each an ordinary `llmtune finetune`
run with the other arguments (model=..., data.*=..., trainer.max_steps=..., any finetune
override) plus peft=<method> seed=<seed> — into output_dir/<method>/seed-<seed>/, then prints
one row per method and writes compare.csv, compare.md and compare.png to output_dir:

  the main metric on validation (and test), mean ± std over the seeds
  trainable parameters and their share of the model
  peak memory (CUDA max allocated on a GPU; on CPU the growth of the process's peak RSS)
  training time without evaluations, and non-pad tokens trained per second of it

A run that fails is reported in one line and marked failed in the table; the others go on (exit
code 1 at the end). Running the same command again with output_dir= of an earlier compare keeps
the runs that finished with the same settings and runs the rest again from the start.
runs=[...] builds the table from runs that exist (run, compare or sweep directories), grouped
by method, without training.

arguments:
  task=NAME               the task, as for finetune (default: classification)
  methods=[A,B,...]       options of conf/peft (none, lora, bitfit, ...); zero_shot and few_shot
                          (prompting baselines, no training) where llmtune.prompting has them
                          (default: [none,lora,bitfit])
  prompting.model=NAME    the causal LM the prompting baselines prompt (default: model= when
                          given, else smollm2); other prompting.* keys go to them too
                          (prompting.max_new_tokens, prompting.batch_size: the generation's)
  seeds=[1,2,...]         one run per method and seed (default: [1,2,3])
  output_dir=DIR          the compare directory (default: runs/compare/<task>/<timestamp>)
  isolate=true|false      each run in a process of its own, so its peak memory is its own
                          (default: true; false saves a few seconds of imports per run)
  runs=[DIR,...]          tabulate these runs instead of training

examples:
  llmtune compare task=ner methods=[none,lora,bitfit] seeds=[1,2,3]
  llmtune compare task=classification methods=[none,lora] trainer.max_steps=150
  llmtune compare runs=[runs/compare/ner/20250101-120000-000]
"""


def main(argv: list[str]) -> None:
    from llmtune.compare import compare, compare_runs, parse_command

    spec, runs = parse_command(argv)
    if runs is not None:
        compare_runs(runs, spec.output_dir)
    else:
        compare(spec)
