"""The neuron is not tied to Qwen3: another transformers architecture, another dtype."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from openai import OpenAI

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Tell me about the river."}]


def _tiny_llama(out: Path, tokenizer_from: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(str(out))
    for file in tokenizer_from.iterdir():
        if file.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(file, out / file.name)
    return out


def test_llama_architecture_in_bfloat16(
    start_neuron: Any, tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _tiny_llama(tmp_path / "llama", tiny_model)
    neuron = start_neuron(
        "--preload", f"llama={path}", "--allowed-path", str(path), "--dtype", "bfloat16"
    )
    client = OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="llama", messages=MESSAGES, max_tokens=12, temperature=0
    )  # type: ignore[arg-type]

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert reply.choices[0].message.content == expected
    record = neuron.get("/node").json()["models"][0]
    assert (record["id"], record["dtype"]) == ("llama", "bfloat16")
