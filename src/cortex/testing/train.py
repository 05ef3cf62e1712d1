"""Fitting the tiny model to the fixtures, and checking that it reproduces them.

This module owns the training data (every fixture's rendered prompt plus its reply, under a few
prompt variants), the full-batch training loop, and the greedy-decoding check that decides when
training is done. Only the exact fixture prompts must reproduce; the variants make the model less
brittle to a system message or extra tools sent by a client. Prompts are rendered by the neuron's
own ``render`` (``cortex.testing.prompts``), so the model answers the prompts the neuron makes.
The loop itself (``train_on_examples``) also trains the other families' models
(``cortex.testing.families``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from cortex.testing.fixtures import FIXTURES, SYSTEM_PROMPT, TIME_TOOL, WEATHER_TOOL, Fixture
from cortex.testing.prompts import prompt_ids
from cortex.testing.tokenizer import ENDOFTEXT, IM_END, token_id

__all__ = [
    "Example",
    "GreedyResult",
    "TrainingError",
    "TrainingReport",
    "fixture_examples",
    "greedy_ids",
    "greedy_reply",
    "prompt_variants",
    "render_prompt",
    "train_on_examples",
    "train_on_fixtures",
]

LEARNING_RATE = 3e-3
MAX_STEPS = 600
# Training stops once every exact fixture prompt's reply tokens are the argmax by at least this
# many logits. The slack keeps greedy decoding stable under other attention kernels, KV caching
# and padded batches, whose float rounding differs from the training forward pass.
MIN_MARGIN = 1.0
# Loss weight of the exact fixture prompts relative to the robustness variants.
EXACT_WEIGHT = 2.0


class TrainingError(RuntimeError):
    """The model did not learn every fixture within the step cap."""


@dataclasses.dataclass(frozen=True)
class TrainingReport:
    steps: int
    final_loss: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class Example:
    """One training sequence: a rendered prompt and the reply ids it must be followed by."""

    fixture: str
    exact: bool  # The fixture's own prompt (checked), not a robustness variant.
    prompt_ids: list[int]
    reply_ids: list[int]  # Ends with the turn's end token (<|im_end|> for qwen3).


def render_prompt(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The chat template's rendering of a conversation, ending with the generation prompt."""
    rendered = tokenizer.apply_chat_template(
        [dict(message) for message in messages],
        tools=[dict(tool) for tool in tools] if tools else None,
        add_generation_prompt=True,
        tokenize=False,
        **dict(chat_template_kwargs or {}),
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}")
    return rendered


def _encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def prompt_variants(
    name: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> Iterator[tuple[bool, list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """(exact, messages, tools) prompt variants of one fixture; the exact prompt comes first."""
    system = {"role": "system", "content": SYSTEM_PROMPT}
    yield True, messages, tools
    yield False, [system, *messages], tools
    # Tool fixtures also with a second tool offered; and "Say hello." with tools, since clients
    # such as agents send tools with every request.
    if tools is not None or name == "plain":
        yield False, messages, [WEATHER_TOOL, TIME_TOOL]


def fixture_examples(tokenizer: PreTrainedTokenizerFast) -> list[Example]:
    """Every fixture's prompt variants, rendered by the neuron, with the fixture's reply."""
    im_end = token_id(tokenizer, IM_END)
    examples = []
    for fixture in FIXTURES.values():
        reply_ids = [*_encode(tokenizer, fixture.reply), im_end]
        variants = prompt_variants(fixture.name, fixture.message_list(), fixture.tool_list())
        for exact, messages, tools in variants:
            ids = prompt_ids(tokenizer, messages, tools, fixture.chat_template_kwargs)
            examples.append(Example(fixture.name, exact, ids, reply_ids))
    return examples


@contextmanager
def _torch_threads() -> Iterator[None]:
    # Tiny matrices gain nothing from many threads (they lose to synchronisation), and the
    # caller's setting is restored because this runs inside test processes.
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclasses.dataclass(frozen=True)
class _Batch:
    input_ids: torch.Tensor  # (rows, length), right-padded.
    attention_mask: torch.Tensor  # (rows, length)
    # The positions that predict reply tokens, flattened over the batch: logits are computed only
    # there, since at this model size the vocabulary projection would otherwise dominate a step.
    rows: torch.Tensor  # (n,)
    columns: torch.Tensor  # (n,)
    targets: torch.Tensor  # (n,) the token each position must predict.
    weights: torch.Tensor  # (n,) loss weights, summing to 1 over all batches.
    checked: torch.Tensor  # (n,) whether the position belongs to an exact fixture prompt.
    owners: tuple[str, ...]  # (n,) the fixture each position belongs to, for error messages.


def _batches(examples: list[Example], pad_id: int) -> list[_Batch]:
    """Right-padded batches of examples of similar length.

    Prompts without tools are ~50 tokens and tool prompts ~250, so one padded batch would spend
    a quarter of every step on padding.
    """
    ordered = sorted(examples, key=lambda e: len(e.prompt_ids) + len(e.reply_ids))
    groups: list[list[Example]] = []
    for example in ordered:
        size = len(example.prompt_ids) + len(example.reply_ids)
        if groups and size <= 2 * len(groups[-1][0].prompt_ids + groups[-1][0].reply_ids):
            groups[-1].append(example)
        else:
            groups.append([example])
    total = sum(len(e.reply_ids) * (EXACT_WEIGHT if e.exact else 1.0) for e in examples)
    batches = []
    for group in groups:
        length = max(len(e.prompt_ids) + len(e.reply_ids) for e in group)
        input_ids = torch.full((len(group), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(group), length), dtype=torch.long)
        rows: list[int] = []
        columns: list[int] = []
        targets: list[int] = []
        weights: list[float] = []
        checked: list[bool] = []
        owners: list[str] = []
        for row, example in enumerate(group):
            ids = example.prompt_ids + example.reply_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            # Position t predicts token t + 1, so the last prompt token predicts the first reply
            # token.
            first = len(example.prompt_ids) - 1
            rows += [row] * len(example.reply_ids)
            columns += range(first, first + len(example.reply_ids))
            targets += example.reply_ids
            weights += [(EXACT_WEIGHT if example.exact else 1.0) / total] * len(example.reply_ids)
            checked += [example.exact] * len(example.reply_ids)
            owners += [example.fixture] * len(example.reply_ids)
        batches.append(
            _Batch(
                input_ids,
                attention_mask,
                torch.tensor(rows),
                torch.tensor(columns),
                torch.tensor(targets),
                torch.tensor(weights),
                torch.tensor(checked),
                tuple(owners),
            )
        )
    return batches


def train_on_fixtures(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0
) -> TrainingReport:
    """Fit ``model`` in place until every exact fixture prompt greedily yields its reply.

    Full-batch AdamW with the loss on reply tokens only (``train_on_examples``).
    Raises ``TrainingError`` if that does not happen within ``MAX_STEPS``.
    """
    return train_on_examples(
        model, fixture_examples(tokenizer), pad_id=token_id(tokenizer, ENDOFTEXT), seed=seed
    )


def train_on_examples(
    model: PreTrainedModel,
    examples: list[Example],
    *,
    pad_id: int,
    seed: int = 0,
) -> TrainingReport:
    """Fit ``model`` in place until every exact example's prompt greedily yields its reply.

    Full-batch AdamW with the loss on reply tokens only. Each step's forward pass doubles as the
    stopping check: when the argmax at every reply position of every exact prompt is the reply
    token (by ``MIN_MARGIN``), greedy decoding reproduces the reply token for token.
    Raises ``TrainingError`` if that does not happen within ``MAX_STEPS``.
    """
    start = time.perf_counter()
    batches = _batches(examples, pad_id)
    decoder = model.base_model
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if not isinstance(decoder, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no separate decoder and output head")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    model.train()
    loss_value = float("nan")
    unlearned: set[str] = set()
    with _torch_threads():
        for step in range(MAX_STEPS + 1):
            optimizer.zero_grad(set_to_none=True)
            unlearned = set()
            loss_value = 0.0
            for batch in batches:
                hidden = decoder(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask
                ).last_hidden_state
                logits = head(hidden[batch.rows, batch.columns])
                targets = batch.targets[:, None]
                log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets)[:, 0]
                loss = -(log_probs * batch.weights).sum()
                loss_value += float(loss.item())
                with torch.no_grad():
                    runner_up = logits.scatter(-1, targets, float("-inf")).max(dim=-1).values
                    margin = logits.gather(-1, targets)[:, 0] - runner_up
                    short = batch.checked & (margin < MIN_MARGIN)
                    if bool(short.any()):
                        unlearned.update(batch.owners[i] for i in short.nonzero()[:, 0].tolist())
                if step < MAX_STEPS:
                    loss.backward()  # type: ignore[no-untyped-call]
            if not unlearned:
                # The check ran on the current weights, so they are the ones to keep.
                model.train(False)
                return TrainingReport(step, loss_value, time.perf_counter() - start)
            if step < MAX_STEPS:
                optimizer.step()
    model.train(False)
    raise TrainingError(
        f"the tiny model did not learn fixtures {sorted(unlearned)} within {MAX_STEPS} steps "
        f"(loss {loss_value:.4f}); a reply may need different wording"
    )


@dataclasses.dataclass(frozen=True)
class GreedyResult:
    text: str  # Decoded with skip_special_tokens=True.
    token_ids: list[int]  # The generated ids, without the prompt.
    ended_with_im_end: bool


def greedy_ids(
    model: PreTrainedModel,
    prompt_ids: list[int],
    *,
    eos_ids: list[int],
    pad_id: int,
    max_new_tokens: int = 128,
) -> list[int]:
    """The ids ``model.generate`` greedily appends to ``prompt_ids``, up to and including the
    first of ``eos_ids``."""
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        output = model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
        )
    generated: list[int] = output[0, input_ids.shape[1] :].tolist()
    return generated


def greedy_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    fixture: Fixture,
    *,
    max_new_tokens: int = 128,
) -> GreedyResult:
    """Greedily decode the model's reply to a fixture's prompt with ``model.generate``."""
    ids = prompt_ids(tokenizer, fixture.messages, fixture.tools, fixture.chat_template_kwargs)
    im_end = token_id(tokenizer, IM_END)
    pad_id = token_id(tokenizer, ENDOFTEXT)
    generated = greedy_ids(
        model, ids, eos_ids=[im_end, pad_id], pad_id=pad_id, max_new_tokens=max_new_tokens
    )
    text = tokenizer.decode(generated, skip_special_tokens=True)
    if not isinstance(text, str):
        raise TypeError(f"decode returned {type(text).__name__}")
    return GreedyResult(text, generated, bool(generated) and generated[-1] == im_end)
