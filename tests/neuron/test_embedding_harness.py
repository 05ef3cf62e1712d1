"""``EmbeddingHarness`` stepped by hand: concurrent requests share a forward, the token budget
and the batch size split the work, a cancelled request is dropped, a failed forward fails
its batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from cortex.errors import EngineFailure, NeuronUnavailable, Overloaded
from cortex.neuron.embedding.harness import EmbeddingHarness
from cortex.neuron.embedding.spec import read_spec


class _Worker:
    """Stands in for the device worker: the test calls ``step()`` itself."""

    def add(self, engine: Any) -> None:
        pass

    def remove(self, engine: Any) -> None:
        pass

    def wake(self) -> None:
        pass


class _Counting(torch.nn.Module):
    """The model, counting its forward passes and the batch shapes it saw."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.shapes: list[tuple[int, int]] = []
        self.broken = False

    def get_input_embeddings(self) -> Any:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        if self.broken:
            raise RuntimeError("the forward broke")
        self.shapes.append((input_ids.shape[0], input_ids.shape[1]))
        return self.model(input_ids=input_ids, **kwargs)


@pytest.fixture(scope="module")
def model(embedding_models: dict[str, Path]) -> Any:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(embedding_models["mean"]), dtype=torch.float32).eval()


def _harness(
    model: Any, embedding_models: dict[str, Path], **kwargs: Any
) -> tuple[EmbeddingHarness, _Counting]:
    spec = read_spec(embedding_models["mean"])
    assert spec is not None
    counting = _Counting(model)
    harness = EmbeddingHarness(
        counting,
        spec,
        torch.device("cpu"),
        _Worker(),
        pad_id=0,
        **kwargs,  # type: ignore[arg-type]
    )
    return harness, counting


async def _queued(harness: EmbeddingHarness, *inputs: list[list[int]]) -> list[asyncio.Task[Any]]:
    tasks = [asyncio.ensure_future(harness.embed(ids, None)) for ids in inputs]
    await asyncio.sleep(0)  # each has reached the inbox
    return tasks


async def test_concurrent_requests_share_one_forward(
    model: Any, embedding_models: dict[str, Path]
) -> None:
    harness, counting = _harness(model, embedding_models)
    first, second = [[2, 10, 11, 3]], [[2, 12, 3], [2, 13, 14, 15, 16, 3]]
    tasks = await _queued(harness, first, second)
    assert harness.num_waiting == 3
    harness.step()
    a, b = await asyncio.gather(*tasks)
    assert counting.shapes == [(3, 6)]  # three inputs, padded to the longest
    assert (a.shape, b.shape) == ((1, 32), (2, 32))
    alone, _ = _harness(model, embedding_models)
    (task,) = await _queued(alone, second)
    alone.step()
    assert torch.allclose(await task, b, atol=1e-6)
    assert (harness.num_waiting, harness.num_running) == (0, 0)


async def test_the_token_budget_splits_a_request_into_steps_shortest_first(
    model: Any, embedding_models: dict[str, Path]
) -> None:
    harness, counting = _harness(model, embedding_models, max_batch_tokens=12)
    inputs = [[2, *range(10, 10 + n), 3] for n in (7, 1, 2, 1)]  # 9, 3, 4 and 3 tokens
    (task,) = await _queued(harness, inputs)
    harness.step()
    # Shortest first: 3 + 3 + 4 tokens fit 12; the 9-token input waits for the next step.
    assert counting.shapes == [(3, 4)]
    assert not task.done()
    harness.step()
    assert counting.shapes == [(3, 4), (1, 9)]
    vectors = await task
    assert vectors.shape == (4, 32)
    one, _ = _harness(model, embedding_models)
    (alone,) = await _queued(one, [inputs[0]])
    one.step()
    assert torch.allclose((await alone)[0], vectors[0], atol=1e-6)  # back in input order


async def test_a_step_sorts_across_requests_and_batches_by_size(
    model: Any, embedding_models: dict[str, Path]
) -> None:
    harness, counting = _harness(model, embedding_models, max_batch_size=2)
    long, short = [2, *range(10, 18), 3], [2, 10, 3]
    tasks = await _queued(harness, [long], [short], [long], [short])
    harness.step()
    # One step, two forwards: the short inputs together, the long ones together.
    assert counting.shapes == [(2, 3), (2, 10)]
    results = await asyncio.gather(*tasks)
    assert torch.allclose(results[0], results[2], atol=1e-6)
    assert torch.allclose(results[1], results[3], atol=1e-6)


async def test_a_cancelled_request_is_dropped_before_its_forward(
    model: Any, embedding_models: dict[str, Path]
) -> None:
    harness, counting = _harness(model, embedding_models)
    gone, kept = await _queued(harness, [[2, 10, 3]], [[2, 11, 12, 3]])
    gone.cancel()
    await asyncio.sleep(0)
    harness.step()
    assert (await kept).shape == (1, 32)
    assert counting.shapes == [(1, 4)]


async def test_a_failed_forward_fails_its_batch_and_the_harness_goes_on(
    model: Any, embedding_models: dict[str, Path]
) -> None:
    harness, counting = _harness(model, embedding_models)
    counting.broken = True
    (task,) = await _queued(harness, [[2, 10, 3]])
    harness.step()
    with pytest.raises(EngineFailure, match="the forward broke"):
        await task
    counting.broken = False
    (task,) = await _queued(harness, [[2, 10, 3]])
    harness.step()
    assert (await task).shape == (1, 32)


async def test_a_full_queue_refuses_and_closing_fails_what_waits(
    model: Any, embedding_models: dict[str, Path]
) -> None:
    harness, _ = _harness(model, embedding_models, max_queue=2)
    tasks = await _queued(harness, [[2, 10, 3]], [[2, 11, 3]])
    with pytest.raises(Overloaded):
        harness.check_room()
    closing = asyncio.ensure_future(harness.aclose())
    await asyncio.sleep(0)
    harness.step()
    await closing
    for task in tasks:
        with pytest.raises(NeuronUnavailable):
            await task
    with pytest.raises(NeuronUnavailable):
        await harness.embed([[2, 3]], None)
