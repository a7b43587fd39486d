#!/usr/bin/env python3
"""GPU benchmark for one H100/H200: llmtune vs HF Trainer vs a plain PyTorch loop, bf16.

Three cases, each trained the same way by every runner (same initial weights, same tokenized
data, same batch size, precision and number of steps; see llmtune/bench/ for what each
number means):

  gpt2_clm        GPT-2 124M shape (GPT2Config, vocab 50257) built from config, causal-LM on
                  random tokens packed into 1024-token blocks, batch 16
  bert_ner        BERT-base shape (768 × 12 layers) built from config, NER on llmtune's built-in
                  sentences joined to a skewed length distribution (median ~25 tokens, tail to
                  256), batch 32
  llama_lora_sft_packed  the same model and LoRA through llmtune's SFT task with packing
                  (prompt/response samples of mixed length) against HF Trainer and the raw loop
                  padding batches of 8 samples
  llama_lora_sft  Llama shape, hidden 2048, 16 layers, intermediate 8192, 32 heads, vocab 32000,
                  tied embeddings (~1.14B parameters), LoRA r=8 on every linear layer, SFT-style
                  examples of mixed length (median ~300 tokens, tail to 2048), batch 8. llmtune
                  has no unpacked SFT task, so its real config path is used with
                  task._target_=llmtune.bench.UnpackedCLMTask (one padded row per example)

Variants ("llmtune+compile", "llmtune+max_tokens_8k", ...) are extra llmtune runs with the
opt-in throughput switches, reported beside the like-for-like run.

The whole script is sized to finish in about 4-6 minutes on an H200 (--budget-s skips the
cases that would start after the budget). Results go to --out as JSON and a table per case.

    python3 benchmarks/gpu_bench.py --out benchmarks/results/gpu.json
    python3 benchmarks/gpu_bench.py --smoke --out /tmp/gpu-smoke.json   # tiny shapes on CPU: checks the script

On the device machine hydra-core, omegaconf (+ antlr4-python3-runtime) and datasets (+ dill,
multiprocess) are not installed: carry them as wheels (benchmarks/README.md says how).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # llmtune from this checkout, installed or not

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)

CASES = ("gpt2_clm", "bert_ner", "llama_lora_sft_packed", "llama_lora_sft")


def word_tokenizer(folder: Path, vocab_size: int, *, pad: bool) -> Path:
    """A fast word-level tokenizer with exactly `vocab_size` entries: words w0, w1, ... and
    <|endoftext|> (plus <pad> when asked; GPT-2 has none, llmtune then pads with EOS).
    Text of such words tokenizes one token per word, so random text = random tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", *(["<pad>"] if pad else [])]
    words = vocab_size - len(specials)
    vocab = {f"w{i}": i for i in range(words)}
    vocab.update({s: words + j for j, s in enumerate(specials)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<pad>" if pad else None, model_input_names=["input_ids", "attention_mask"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def random_text_rows(rng: random.Random, lengths: list[int], vocab_words: int) -> list[dict]:
    return [{"text": " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(n))} for n in lengths]


def build_cases(names: list[str], workdir: Path, *, smoke: bool) -> list:
    from llmtune.bench import Case, skewed_ner_rows

    rng = random.Random(0)
    precision = "no" if smoke else "bf16"
    cases = []
    for name in names:
        if name == "gpt2_clm":
            seq, batch, steps, warmup = (128, 4, 4, 1) if smoke else (1024, 16, 50, 10)
            dims = "n_embd:64,n_layer:2,n_head:2" if smoke else "n_embd:768,n_layer:12,n_head:12"
            tok = word_tokenizer(workdir / "gpt2-tokenizer", 50257, pad=False)
            # Rows of 1023 words + EOS pack into exactly one block each; a few spare blocks.
            rows = random_text_rows(rng, [seq - 1] * (steps * batch + batch), 50256)
            cases.append(Case(
                name, "pretrain",
                ["task=clm", "model=gpt2", "model.name_or_path=null", f"model.tokenizer='{tok}'",
                 f"model.config={{model_type:gpt2,{dims},n_positions:1024}}", f"task.max_length={seq}", "optimizer.lr=6e-4"],
                rows, batch_size=batch, steps=steps, warmup=warmup, precision=precision,
                runners=("llmtune", "hf", "raw"),  # equal-length blocks: group_by_length changes nothing
                variants={"compile": ["trainer.compile=true"]},
                description=f"GPT-2 124M shape, causal LM, {seq}-token blocks of random tokens, batch {batch}, {precision}",
            ))
        elif name == "bert_ner":
            batch, steps, warmup = (4, 4, 1) if smoke else (32, 80, 10)
            dims = (["model.config.hidden_size=64", "model.config.num_hidden_layers=2", "model.config.num_attention_heads=2", "model.config.intermediate_size=128"]
                    if smoke else
                    ["model.config.hidden_size=768", "model.config.num_hidden_layers=12", "model.config.num_attention_heads=12", "model.config.intermediate_size=3072"])
            cases.append(Case(
                name, "finetune",
                ["task=ner", "model=small_mlm", *dims, "model.tokenizer_vocab_size=28996", "task.max_length=256", "optimizer.lr=5e-5"],
                skewed_ner_rows(400 if smoke else 6000), batch_size=batch, steps=steps, warmup=warmup, precision=precision,
                # The opt-in throughput modes, reported beside the like-for-like batch of 32.
                variants={"compile": ["trainer.compile=true"],
                          **{f"max_tokens_{n}": [f"trainer.max_tokens={n}"] for n in ((512, 1024) if smoke else (8192, 16384))}},
                description=f"BERT-base shape, NER, skewed lengths (median ~25 tokens, max 256), batch {batch}, {precision}",
            ))
        elif name in ("llama_lora_sft_packed", "llama_lora_sft"):
            batch, steps, warmup, max_len = (4, 4, 1, 256) if smoke else (8, 30, 8, 2048)
            dims = ("hidden_size=64 intermediate_size=128 num_hidden_layers=2 num_attention_heads=4 num_key_value_heads=4" if smoke
                    else "hidden_size=2048 intermediate_size=8192 num_hidden_layers=16 num_attention_heads=32 num_key_value_heads=32")
            tok = word_tokenizer(workdir / "llama-tokenizer", 32000, pad=True)
            llama = ["model=tiny_llama", f"model.tokenizer='{tok}'", *[f"model.config.{d}" for d in dims.split()],
                     f"model.config.max_position_embeddings={max_len}", "model.config.tie_word_embeddings=true",
                     "peft=lora", f"task.max_length={max_len}", "optimizer.lr=2e-4"]
            n = steps * batch * 3 + batch  # a pool to sample from: no runner needs a second epoch
            lengths = [max(16, min(max_len - 2, round(rng.lognormvariate(math.log(300 if not smoke else 40), 0.8)))) for _ in range(n)]
            shape = dict(batch_size=batch, steps=steps, warmup=warmup, precision=precision)
            if name == "llama_lora_sft_packed":
                # llmtune's SFT task packs samples into max_len rows (per-sample position ids, no
                # attention across samples), as many rows per step as hold the real tokens of
                # `batch` samples; HF and the raw loop pad `batch` samples, the prompt labelled -100.
                rows = []
                for words in random_text_rows(rng, lengths, 31998):
                    words = words["text"].split()
                    cut = max(4, len(words) // 3)
                    rows.append({"prompt": " ".join(words[:cut]), "response": " ".join(words[cut:])})
                cases.append(Case(
                    name, "finetune", ["task=sft", "task.packing=true", *llama], rows, packed_rows=True, **shape,
                    description=f"Llama ~1.1B shape, LoRA r=8, SFT of mixed length (median ~300, max {max_len}): "
                                f"llmtune packed rows vs padded batches of {batch}, {precision}",
                ))
            else:
                cases.append(Case(
                    name, "pretrain", ["task=clm", "task._target_=llmtune.bench.UnpackedCLMTask", *llama, "scheduler=linear"],
                    random_text_rows(rng, lengths, 31998), **shape,
                    description=f"Llama ~1.1B shape, LoRA r=8, SFT rows of mixed length (median ~300, max {max_len}), batch {batch}, {precision}",
                ))
        else:
            raise SystemExit(f"gpu_bench: unknown case '{name}'; cases: {', '.join(CASES)}")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmtune vs HF Trainer vs a raw loop on one GPU (bf16).")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated (default: {','.join(CASES)})")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"), help="JSON results file")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="peak FLOP/s for MFU (default 989e12: H100/H200 dense bf16)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no case after this many seconds (default 420)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script without a GPU")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from llmtune import bench

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible; use --smoke to check the script on CPU.", file=sys.stderr)
        return 2
    device = "cpu" if args.smoke else "cuda"
    bench.quiet_libraries()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmtune-gpu-bench-") as tmp:
        cases = build_cases(names, Path(tmp), smoke=args.smoke)
        print(f"cases built in {time.perf_counter() - started:.1f}s", flush=True)
        results = bench.run_all(cases, Path(args.out), device=device, peak_flops=args.peak_flops,
                                argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
                                budget_s=args.budget_s)
    failed = bench.failures(results)
    print(json.dumps({"failed": failed, "total_s": round(time.perf_counter() - started, 1), "out": args.out}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
