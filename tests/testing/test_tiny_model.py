"""The tiny model folders: loading, config, and exact reproduction of the fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from cortex.testing import FIXTURES, greedy_reply, render_prompt
from cortex.testing.tokenizer import VOCAB_SIZE

# Every test here builds (or loads) a model folder.
pytestmark = pytest.mark.slow

EXPECTED_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def test_folder_contents(untrained_dir: Path) -> None:
    assert {path.name for path in untrained_dir.iterdir()} == EXPECTED_FILES
    # World-readable, although transformers 5 writes model.safetensors with mode 0600.
    assert {path.stat().st_mode & 0o777 for path in untrained_dir.iterdir()} == {0o644}
    assert untrained_dir.stat().st_mode & 0o777 == 0o755
    config = json.loads((untrained_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["max_position_embeddings"] == 65536
    assert config["vocab_size"] == VOCAB_SIZE
    assert config["tie_word_embeddings"] is True
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    generation = json.loads((untrained_dir / "generation_config.json").read_text())
    # <|im_end|> then <|endoftext|>, as in Qwen3.
    assert generation["eos_token_id"] == [VOCAB_SIZE - 7, VOCAB_SIZE - 9]
    assert generation["pad_token_id"] == VOCAB_SIZE - 9
    weights = load_file(untrained_dir / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


def test_untrained_model_loads_and_generates(untrained_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(untrained_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(untrained_dir)
    assert model.config.max_position_embeddings == 65536
    assert model.dtype == torch.float32
    encoded: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    output = model.generate(**encoded, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert output.shape == (1, encoded["input_ids"].shape[1] + 8)


def test_trained_model_files_match_untrained_layout(trained_dir: Path, untrained_dir: Path) -> None:
    assert {path.name for path in trained_dir.iterdir()} == EXPECTED_FILES
    # Same tokenizer and architecture; only the weights differ.
    for name in ("tokenizer.json", "chat_template.jinja", "config.json"):
        assert (trained_dir / name).read_bytes() == (untrained_dir / name).read_bytes()
    assert (trained_dir / "model.safetensors").read_bytes() != (
        untrained_dir / "model.safetensors"
    ).read_bytes()


@pytest.fixture(scope="module")
def trained(trained_dir: Path) -> tuple[Any, PreTrainedTokenizerFast]:
    tokenizer: Any = AutoTokenizer.from_pretrained(trained_dir)
    return AutoModelForCausalLM.from_pretrained(trained_dir), tokenizer


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_trained_model_reproduces_fixture(
    trained: tuple[Any, PreTrainedTokenizerFast], name: str
) -> None:
    model, tokenizer = trained
    fixture = FIXTURES[name]
    result = greedy_reply(model, tokenizer, fixture)
    assert result.text == fixture.reply
    assert result.ended_with_im_end


def test_trained_model_reproduces_fixtures_in_a_left_padded_batch(
    trained: tuple[Any, PreTrainedTokenizerFast],
) -> None:
    # Serving code batches requests; padding must not change the greedy replies.
    model, tokenizer = trained
    fixtures = list(FIXTURES.values())
    prompts = [
        render_prompt(tokenizer, f.messages, f.tools, f.chat_template_kwargs) for f in fixtures
    ]
    encoded = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    output = model.generate(**encoded, do_sample=False, max_new_tokens=64)
    replies = tokenizer.batch_decode(
        output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert replies == [f.reply for f in fixtures]
