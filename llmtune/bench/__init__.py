"""`llmtune bench`: the same training run three ways, side by side, in one process.

For each case the SAME model (one set of initial weights), the SAME tokenized training data,
the SAME batch size (samples per optimizer step), precision and number of optimizer steps go
through:

  llmtune             llmtune's engine, built the real way: Hydra compose -> build_accelerator
                      -> build_trainer -> fit (evaluation and checkpoints off, a log line per step)
  hf                  transformers.Trainer with its defaults for the setting (random sampler, the
                      standard data collator, its default optimizer), logging every step like llmtune
  hf_group_by_length  the same with train_sampling_strategy="group_by_length"
  raw                 a minimal hand-written PyTorch loop: AdamW (no schedule), dynamic padding,
                      random order, gradient clipping

What is measured (all of it reported, nothing asserted):

  tokens_per_s     non-pad tokens trained (attention-mask ones of the batches that went into
                   optimizer steps) per second, over the steps after warm-up
  step_ms_median   median time between consecutive optimizer-step ends after warm-up; this
                   includes loading and collating the batch, forward, backward, clipping, the
                   optimizer and the framework's per-step work (logging, callbacks)
  wall_s           the whole training call: for llmtune fit(), for HF Trainer(...) + train(),
                   for the raw loop from moving the model to the device to the last step; the
                   shared preparation (tokenizer, tokenization, model build) is `prep_s` per case
  padding_fraction pad tokens / all tokens in the trained batches
  memory           CUDA: torch.cuda.max_memory_allocated during the run (everything the run holds
                   on the GPU: weights, gradients, optimizer state, activations). CPU: the peak
                   resident-set growth of this process during the run, sampled every 5 ms from
                   /proc/self/statm, over the resident size at its start (the model weights are
                   already resident then): gradients, optimizer state, activations, buffers.
                   Freed heap is handed back (malloc_trim) before each run so earlier runs do not
                   hide growth, but it is an approximation: the allocator may keep some memory.
  mfu              (CUDA only) model-FLOP utilisation: (2N + 2N + 2N_trainable) × tokens/s ÷ peak,
                   i.e. 6N for full training; attention FLOPs are not counted (understates it).

The step clock synchronises CUDA at every step end (the same for all runners) so a step's
time is the GPU's, not the time to enqueue it.
"""

from llmtune.bench.cases import Case, UnpackedCLMTask, skewed_classification_rows, skewed_ner_rows
from llmtune.bench.report import failures, main, quiet_libraries, run_all

__all__ = ["Case", "UnpackedCLMTask", "failures", "main", "quiet_libraries", "run_all", "skewed_classification_rows", "skewed_ner_rows"]
