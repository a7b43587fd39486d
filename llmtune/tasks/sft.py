"""Supervised fine-tuning (SFT) of decoders: learn the response to a prompt, optionally packed.

Rows have `prompt` and `response` columns, or a `messages` column: a chat, a list of
{"role": "system" | "user" | "assistant", "content": ...}, whose assistant turns are learned
(ShareGPT's {"from": "system" | "human" | "gpt", "value": ...} turns are read as the same roles;
any other role is refused, naming the row).
Formatting uses the tokenizer's chat template when it has one, else PLAIN_TEMPLATE below.
The loss covers the response tokens and the EOS that ends each response, nothing else; labels
come shifted (position t predicts token t+1) like the clm task's, and never across samples.

Packing (task.packing=true) puts several tokenized samples in one row of up to max_length
tokens (best-fit decreasing, samples never split). Each sample's position_ids restart at 0, and
the model gets no attention mask (the batch's mask only counts real tokens; the `logits` hook
leaves it out). transformers then builds a block-diagonal causal mask from the position ids
(masking_utils.find_packed_sequence_indices; sdpa and eager tested, flex built the same way),
so no token attends to another sample and the loss equals unpacked training. That detection is skipped
when the model holds a KV cache, which the default use_cache=True creates even in training, so
the forward pass asks for use_cache=False (the saved model keeps its setting for generation).
flash_attention_* separates packed samples only within a single row, so under it a batch of
packed rows is flattened into one row (its variable-length kernel then sees every sample).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import IGNORE_INDEX, EvalContext, PredictContext, Task
from llmtune.tasks.generation import GENERATION_DEFAULTS, encode_prompts, generate_texts

log = logging.getLogger("llmtune")

# Used when the tokenizer has no chat template. A turn of a chat renders as one of these
# (the response is followed by the EOS token, the part that is learned):
PLAIN_TEMPLATE = {
    "system": "### System:\n{content}\n\n",
    "user": "### Instruction:\n{content}\n\n### Response:\n",
    "assistant": "{content}",
}
ROLES = tuple(PLAIN_TEMPLATE)
# ShareGPT files write a turn as {"from": "human" | "gpt" | "system", "value": ...}: read as these.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def _field(turn: dict, *names: str):
    """The first of `names` that the turn sets (Arrow gives every turn every key of the column,
    null where a row did not write it)."""
    return next((turn[name] for name in names if turn.get(name) is not None), None)


def _as_turn(turn):
    """{role, content} from a turn written with role/content or ShareGPT's from/value keys."""
    if not isinstance(turn, dict):
        return turn  # _check_messages reports it
    role = _field(turn, "role", "from")
    return {"role": SHAREGPT_ROLES.get(role, role), "content": _field(turn, "content", "value")}


def _as_messages(row: dict) -> list[dict]:
    if row.get("messages") is None:
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    messages = row["messages"]
    return [_as_turn(turn) for turn in messages] if isinstance(messages, list) else messages


def _check_turn(turn, where: str) -> None:
    if not isinstance(turn, dict):
        raise UserError(f"{where}: a turn must be an object like {{\"role\": \"user\", \"content\": \"...\"}}; got {turn!r:.60}.")
    if turn["role"] not in ROLES:
        got = f"role '{turn['role']}' is not one task=sft trains on" if turn["role"] is not None else "it has no role ('role', or ShareGPT's 'from')"
        raise UserError(
            f"{where}: {got}; use {', '.join(ROLES)} (ShareGPT's human and gpt are read as user and assistant). Fix the role or remove the turn."
        )
    if not isinstance(turn["content"], str):
        raise UserError(f"{where}: the {turn['role']} turn's content must be text ('content', or ShareGPT's 'value'); got {turn['content']!r:.60}.")


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects; got {type(messages).__name__}.")
    for number, turn in enumerate(messages, start=1):
        _check_turn(turn, f"{where} turn {number}")
    if not any(turn["role"] == "assistant" for turn in messages):
        raise UserError(f"{where}: the chat has no assistant turn, so there is nothing to learn; add one or remove the row.")


def _plain_segments(messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, learned) pieces of a chat in PLAIN_TEMPLATE."""
    return [(PLAIN_TEMPLATE[t["role"]].format(content=t["content"]), t["role"] == "assistant") for t in messages]


def _chat_segments(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """(text, learned) pieces from the chat template: each assistant turn is the text the
    template adds between the chat up to it (with the generation prompt) and the chat through
    it. Templates that rewrite earlier turns (none of the common ones) cannot be split so."""
    pieces, done = [], ""
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and through.startswith(prompt)):
            raise UserError(
                f"{where}: the tokenizer's chat template does not render this chat turn by turn (a later turn changes "
                "earlier text), so the response tokens cannot be found; use prompt/response rows or a model whose template appends turns."
            )
        pieces += [(prompt[len(done):], False), (through[len(prompt):], True)]
        done = through
    return pieces


def prompt_text(messages: list[dict], tokenizer) -> str:
    """The chat so far, rendered as in training, ending where the assistant's reply starts
    (the tokenizer's chat template with its generation prompt, else PLAIN_TEMPLATE after BOS
    when the tokenizer adds one). Tokenize it with add_special_tokens=False."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token if tokenizer.bos_token and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] else ""
    return bos + "".join(text for text, _ in _plain_segments(messages))


def shifted_labels(ids: list[int], learned: list[bool]) -> list[int]:
    """Labels aligned with the logits: position t is trained to predict token t+1 when that
    token is learned. The last position predicts nothing, so no label reaches the next
    sample of a packed row."""
    return [ids[t + 1] if learned[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


@dataclass
class SFTTask(Task):
    name: str = "sft"
    max_length: int = 256
    packing: bool = False
    attn_implementation: str | None = None   # the model's: flash joins packed rows into one
    builtin: str = "sft"
    eval_generate: int = 4        # each evaluation also generates replies to this many held-out chats (0: none)

    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "loss"
    greater_is_better = False
    # `prompt` + `response`, or `messages`: checked by the task itself (_columns), since
    # load_raw can only require a fixed set.
    required_columns = ()
    predict_params = GENERATION_DEFAULTS

    # ---------------------------------------------------------------- columns and formatting
    def _columns(self, split) -> None:
        columns = set(split.column_names)
        if "messages" in columns or {"prompt", "response"} <= columns:
            return
        where = split.info.description or "the training data"
        # ShareGPT files keep their chats in 'conversations'.
        rename = "data.columns={conversations: messages}" if "conversations" in columns else "data.columns={SOURCE: prompt, ...}"
        raise UserError(
            f"{where}: task=sft needs 'prompt' and 'response' columns or a 'messages' column (a list of {{role, content}}); "
            f"found: {', '.join(sorted(columns)) or 'none'}. Rename columns with {rename}."
        )

    def texts(self, rows):
        """The plain-template text of each row (trains a tokenizer for a model built from scratch)."""
        self._columns(rows)
        for row in rows:
            yield "".join(text for text, _ in _plain_segments(_as_messages(row))) + "\n"

    def setup(self, raw) -> None:
        """No label maps; checks every row of every split before a tokenizer or model loads."""
        for split, rows in raw.items():
            self._columns(rows)
            where = common.describe(raw, split)
            for number, row in zip(common.source_rows(rows), rows, strict=True):
                self._messages(row, f"{where} row {number}")

    def check_eval(self, raw) -> None:
        self.setup(raw)  # setup only checks rows: there is no trained state to keep

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "packing": self.packing}

    @property
    def packs_samples(self) -> bool:
        return self.packing

    def _messages(self, row: dict, where: str) -> list[dict]:
        """The row as a checked chat of {role, content} turns."""
        if row.get("messages") is None and not (isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str)):
            raise UserError(f"{where}: 'prompt' and 'response' must both be text; fix or remove the row.")
        messages = _as_messages(row)
        _check_messages(messages, where)
        return messages

    def _pieces(self, row: dict, tokenizer, where: str) -> list[tuple[str, bool]]:
        messages = self._messages(row, where)
        if getattr(tokenizer, "chat_template", None):
            return _chat_segments(tokenizer, messages, where)
        return _plain_segments(messages)

    def _encode(self, rows, tokenizer, where: str) -> list[tuple[list[int], list[bool]]]:
        """(token ids, learned flags) per row, untruncated. One tokenizer call per split: each
        piece is tokenized on its own (so a response starts on a token boundary) and EOS is
        appended to every response that does not already hold it (the model learns to stop).
        The plain template starts with BOS when the tokenizer would add one itself; a chat
        template writes its own special tokens."""
        pieces = [self._pieces(row, tokenizer, f"{where} row {n}") for n, row in zip(common.source_rows(rows), rows, strict=True)]
        flat = [text for row in pieces for text, _ in row]
        tokenized = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        adds_bos = not getattr(tokenizer, "chat_template", None) and bos is not None and tokenizer("x")["input_ids"][:1] == [bos]
        encoded = []
        for row in pieces:
            ids, learned = ([bos], [False]) if adds_bos else ([], [])
            for _, is_target in row:
                piece = next(tokenized)
                if is_target and eos not in piece:
                    piece = piece + [eos]
                ids += piece
                # A chat template's turn goes on past its EOS (ChatML: "<|im_end|>\n"); what
                # follows the EOS is the next turn's formatting, not the reply: not learned.
                stop = piece.index(eos) + 1 if is_target else 0
                learned += [True] * stop + [False] * (len(piece) - stop)
            encoded.append((ids, learned))
        return encoded

    def full_lengths(self, rows, tokenizer) -> list[int]:
        return [len(ids) for ids, _ in self._encode(rows, tokenizer, rows.info.description or "the training data")]

    # ---------------------------------------------------------------- preprocessing
    def preprocess(self, raw, tokenizer, num_proc=None):  # one tokenizer call per split: num_proc unused
        from datasets import Dataset, DatasetDict

        if tokenizer.eos_token_id is None:
            raise UserError(
                "task=sft needs a decoder whose tokenizer has an end-of-sequence token (to end each response); this one has none. "
                "Use a decoder such as model=tiny_llama, model=gpt2 or a hub causal LM."
            )
        out = {}
        for split, rows in raw.items():
            self._columns(rows)
            samples, truncated, empty = [], 0, 0
            for ids, learned in self._encode(rows, tokenizer, rows.info.description or f"the {split} split"):
                if len(ids) > self.max_length:
                    truncated += 1
                    ids, learned = ids[: self.max_length], learned[: self.max_length]
                labels = shifted_labels(ids, learned)
                if all(label == IGNORE_INDEX for label in labels):
                    empty += 1  # the prompt fills max_length: no response token is left to learn
                    continue
                samples.append((ids, labels))
            if truncated:
                log.warning("%s: %d of %d samples are longer than task.max_length=%d tokens and were truncated", split, truncated, len(rows), self.max_length)
            if empty:
                log.warning("%s: dropped %d samples with no response token left after truncation (raise task.max_length)", split, empty)
            out[split] = Dataset.from_dict(self._pack(samples, split) if self.packing else {
                "input_ids": [ids for ids, _ in samples], "labels": [labels for _, labels in samples],
            })
        return DatasetDict(out)

    def _pack(self, samples: list[tuple[list[int], list[int]]], split: str) -> dict:
        """Samples -> rows of up to max_length tokens, with position ids restarting per sample."""
        return common.pack_samples(samples, self.max_length, split)

    # ---------------------------------------------------------------- batches and metrics
    def collator(self, tokenizer, train: bool):
        pad = tokenizer.pad_token_id

        def collate_packed(features: list[dict]) -> dict:
            return common.pad_packed(features, pad)

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, ("input_ids",))
            batch["labels"] = common.pad_labels([f["labels"] for f in features], batch["input_ids"].shape[1])
            return batch

        return collate_packed if self.packing else collate

    def logits(self, model, batch: dict, labels):
        """The forward pass (the engine's hook): packed batches go without their attention mask
        and without a KV cache (common.packed_forward)."""
        flash = str(self.attn_implementation or "").startswith("flash")
        return common.packed_forward(model, batch, labels, flatten=flash)

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        """Held-out loss (the main metric), and replies generated for the first
        `eval_generate` chats of the split, handed to the engine for the log and predictions/
        (every process generates the same few: nothing to gather)."""
        metrics = super().evaluate(model, loader, ctx)
        if self.eval_generate > 0 and ctx.raw is not None and len(ctx.raw):
            ctx.report_predictions(self._sample_replies(ctx.accelerator.unwrap_model(model), ctx))
        return metrics

    def _sample_replies(self, model, ctx: EvalContext) -> list[dict]:
        """{source: the chat up to its last assistant turn, reference: that turn, prediction}."""
        rows = ctx.raw.select(range(min(self.eval_generate, len(ctx.raw))))
        where = rows.info.description or "the evaluation data"
        chats, references = [], []
        for number, row in enumerate(rows, start=1):
            messages = self._messages(row, f"{where} row {number}")
            last = max(i for i, turn in enumerate(messages) if turn["role"] == "assistant")
            if last == 0:
                continue  # nothing comes before the reply: no prompt to generate from
            chats.append(messages[:last])
            references.append(messages[last]["content"])
        if not chats:
            return []
        inputs = encode_prompts(ctx.tokenizer, [prompt_text(chat, ctx.tokenizer) for chat in chats], add_special_tokens=False)
        model.eval()
        try:
            replies = generate_texts(model, ctx.tokenizer, inputs, {})
        finally:
            model.train()
        return [{"source": "\n".join(f"{turn['role']}: {turn['content']}" for turn in chat), "reference": reference, "prediction": reply}
                for chat, reference, reply in zip(chats, references, replies, strict=True)]

    # ---------------------------------------------------------------- predict / serve
    def read_input(self, item, where: str) -> dict:
        """A prompt (text), {"prompt": ...} or {"messages": [...]} (a chat whose last turn is
        the user's; the reply is generated)."""
        if isinstance(item, str):
            return {"messages": [{"role": "user", "content": item}]}
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            return {"messages": [{"role": "user", "content": item["prompt"]}]}
        if isinstance(item, dict) and isinstance(item.get("messages"), list):
            messages = [_as_turn(turn) for turn in item["messages"]]
            for number, turn in enumerate(messages, start=1):
                _check_turn(turn, f"{where} turn {number}")
            return {"messages": messages}
        raise UserError(f"{where}: expected a prompt (text), or an object with 'prompt' or 'messages'; got {str(item)[:60]!r}.")

    def input_length(self, row: dict) -> int:
        return sum(len(turn["content"]) for turn in row["messages"])

    def _prompt_text(self, messages: list[dict], tokenizer) -> str:
        return prompt_text(messages, tokenizer)

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """The assistant's reply to each chat (greedy unless temperature > 0)."""
        prompts = [self._prompt_text(row["messages"], ctx.tokenizer) for row in rows]
        inputs = encode_prompts(ctx.tokenizer, prompts, add_special_tokens=False)
        return [{"generated": text} for text in generate_texts(model, ctx.tokenizer, inputs, ctx.params)]
