"""Prompting a model that was not trained on the task: the helpers of `Task.prompt_predict`.

- `render`: demonstrations and a query as one prompt; a chat (the tokenizer's template, each
  demonstration a user turn and its answer an assistant turn) when the tokenizer has one, else
  plain text ("query answer" blocks separated by blank lines).
- `continuation_scores`: how likely a causal LM finds each option (e.g. a label's word) right
  after each prompt: the mean log-probability of the option's tokens, so a word of several
  tokens is not penalised for its length.
- `generate`: greedy continuations of prompts (tasks whose answer is text to parse).
- `cloze_scores` / `cloze_finetune`: PET-style prompting of a masked LM: the pattern holds
  [MASK] tokens where a label's word goes, and a label's score is the mean log-probability of
  its word's tokens at those masks; a short fine-tune on a few examples trains that score with
  cross-entropy over the labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from llmtune.errors import UserError

log = logging.getLogger("llmtune")
PROGRESS_EVERY = 10  # batches


def uses_chat(tokenizer, settings) -> bool:
    return bool(settings.chat and getattr(tokenizer, "chat_template", None))


def render(tokenizer, demos: Sequence[tuple[str, str]], query: str, chat: bool, sep: str = " ") -> str:
    """The prompt for `query` after the (query, answer) demonstrations; it ends where the answer
    starts. Plain text puts `sep` between a query and its answer."""
    if chat:
        messages = []
        for user, answer in demos:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": query})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{user}{sep}{answer}\n\n" for user, answer in demos) + query


def fill(template: str, where: str, **fields) -> str:
    """`template` with its {fields}; one line naming the key for a field the task does not fill."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"{where}={template!r}: cannot fill it ({type(exc).__name__}: {exc}); the fields are {', '.join('{' + f + '}' for f in fields)} (write {{{{ and }}}} for literal braces).") from None


def _encode(tokenizer, text: str, chat: bool) -> list[int]:
    # A chat template writes its own special tokens; plain text gets the tokenizer's (BOS).
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def continuation_scores(model, tokenizer, prompts: list[str], options: list[str], settings, chat: bool) -> torch.Tensor:
    """[prompts, options]: the mean log-probability per token of each option after each prompt.
    Prompts longer than settings.max_length tokens lose their start (the query stays whole).

    Each prompt runs once per option of several tokens (once at least); the options of one
    token are read off its first run, at the prompt's last position, at no extra cost."""
    option_ids = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in options]
    empty = [o for o, ids in zip(options, option_ids, strict=True) if not ids]
    if empty:
        raise UserError(f"prompting: the option {empty[0]!r} is no token at all for this tokenizer; choose another word (prompting.verbalizer).")
    single = [j for j, ids in enumerate(option_ids) if len(ids) == 1]
    carriers = [j for j, ids in enumerate(option_ids) if len(ids) > 1] or [None]
    runs = []  # (prompt index, option index or None, token ids, where the option starts)
    for p, prompt in enumerate(prompts):
        prompt_ids = _encode(tokenizer, prompt, chat)
        for j in carriers:
            ids = option_ids[j] if j is not None else []
            keep = max(settings.max_length - len(ids), 1)
            runs.append((p, j, prompt_ids[-keep:] + ids, min(len(prompt_ids), keep)))
    scores = torch.zeros(len(prompts), len(options))
    first_tokens = torch.tensor([option_ids[j][0] for j in single], dtype=torch.long)
    for start in range(0, len(runs), settings.batch_size):
        _progress(start, len(runs), settings.batch_size, "sequences scored")
        batch = runs[start:start + settings.batch_size]
        logprobs = torch.log_softmax(_logits(model, [ids for _, _, ids, _ in batch], tokenizer.pad_token_id or 0), dim=-1)
        for row, (p, j, ids, at) in enumerate(batch):
            # Position t predicts token t+1: the option's tokens at..end come from at-1..end-1.
            if j is not None:
                scores[p, j] = logprobs[row, at - 1:len(ids) - 1].gather(1, torch.tensor(ids[at:])[:, None]).mean()
            if j == carriers[0] and single:
                scores[p, single] = logprobs[row, at - 1, first_tokens]
    return scores


def _progress(done: int, total: int, batch_size: int, what: str) -> None:
    """A log line every PROGRESS_EVERY batches: a real model on a CPU takes minutes."""
    if done and (done // batch_size) % PROGRESS_EVERY == 0:
        log.info("prompting: %d of %d %s", done, total, what)


def _logits(model, sequences: list[list[int]], pad: int) -> torch.Tensor:
    """Logits [rows, positions, vocabulary] (float32, on the CPU) of right-padded token sequences."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
    device = _device(model)
    return model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], settings, chat: bool) -> list[str]:
    """The greedy continuation of each prompt (until EOS or max_new_tokens), batch by batch."""
    from llmtune.tasks.generation import generate_texts

    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"  # new tokens line up; the query stays whole
    try:
        out = []
        for start in range(0, len(prompts), settings.batch_size):
            _progress(start, len(prompts), settings.batch_size, "prompts answered")
            inputs = tokenizer(prompts[start:start + settings.batch_size], return_tensors="pt", padding=True,
                               truncation=True, max_length=settings.max_length, add_special_tokens=not chat)
            out += generate_texts(model, tokenizer, dict(inputs), settings.generation)
        return out
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides


# ------------------------------------------------------------------ cloze (masked LMs)
def _word_ids(tokenizer, words: list[str]) -> list[list[int]]:
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    for word, pieces in zip(words, ids, strict=True):
        if not pieces or tokenizer.unk_token_id in pieces:
            raise UserError(f"prompting=cloze: the label word {word!r} is not in the model's vocabulary (it reads as {tokenizer.unk_token}); choose another with prompting.verbalizer.")
    return ids


def _cloze_batch(tokenizer, texts: list[str], template: str, n_masks: int, settings) -> dict:
    if tokenizer.mask_token is None:
        raise UserError("prompting=cloze needs a masked LM whose tokenizer has a mask token (e.g. model=tiny_bert or a BERT-style model); this one has none.")
    masks = " ".join([tokenizer.mask_token] * n_masks)
    filled = [fill(template, "prompting.template", text=text, mask=masks) for text in texts]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # long texts lose their start, never the pattern's masks
    try:
        return tokenizer(filled, return_tensors="pt", padding=True, truncation=True, max_length=settings.max_length)
    finally:
        tokenizer.truncation_side = side


def _cloze_logprobs(model, tokenizer, texts: list[str], template: str, word: list[int], settings) -> torch.Tensor:
    """[texts]: the mean log-probability of `word`'s tokens at the pattern's masks."""
    batch = _cloze_batch(tokenizer, texts, template, len(word), settings).to(_device(model))
    logprobs = torch.log_softmax(model(**batch).logits.float(), dim=-1)
    rows, positions = (batch["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
    if len(rows) != len(texts) * len(word):
        raise UserError(f"prompting.template={template!r}: the pattern must hold {{mask}} once, where the label word goes.")
    targets = torch.tensor(word, device=logprobs.device).repeat(len(texts))
    return logprobs[rows, positions, targets].view(len(texts), len(word)).mean(-1)


def cloze_scores(model, tokenizer, texts: list[str], words: list[str], template: str, settings) -> torch.Tensor:
    """[texts, words]: each label word's mean log-probability at the masks of the pattern."""
    word_ids = _word_ids(tokenizer, words)
    model.eval()
    columns = []
    with torch.no_grad():
        for word in word_ids:
            parts = [_cloze_logprobs(model, tokenizer, texts[i:i + settings.batch_size], template, word, settings).cpu()
                     for i in range(0, len(texts), settings.batch_size)]
            columns.append(torch.cat(parts))
    return torch.stack(columns, dim=1)


def cloze_finetune(model, tokenizer, texts: list[str], gold: list[int], words: list[str], template: str, settings) -> list[float]:
    """settings.finetune_steps AdamW steps on (text, label) examples: cross-entropy of the gold
    label over the label words' cloze scores (PET's loss). Every weight trains; returns the losses."""
    word_ids = _word_ids(tokenizer, words)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    target = torch.tensor(gold, device=_device(model))
    model.train()
    losses = []
    for _ in range(settings.finetune_steps):
        chosen = torch.randperm(len(texts), generator=generator)[:settings.batch_size].tolist()
        scores = torch.stack([_cloze_logprobs(model, tokenizer, [texts[i] for i in chosen], template, w, settings) for w in word_ids], dim=1)
        loss = F.cross_entropy(scores, target[chosen])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses
