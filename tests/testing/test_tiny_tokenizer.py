"""The tiny tokenizer: deterministic build, marker tokens, byte-level round trips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from cortex.testing.tokenizer import CONTROL_TOKENS, SPECIAL_TOKENS, VOCAB_SIZE, save_tokenizer

MARKERS = (*SPECIAL_TOKENS, *CONTROL_TOKENS)


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_build_is_byte_identical(tmp_path: Path) -> None:
    save_tokenizer(tmp_path / "a")
    # A second process with a single rayon thread: different hash seeds and scheduling.
    code = (
        "import sys; from pathlib import Path; from cortex.testing.tokenizer import save_tokenizer;"
        " save_tokenizer(Path(sys.argv[1]))"
    )
    env = {**os.environ, "RAYON_RS_NUM_CPUS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True, env=env)
    save_tokenizer(tmp_path / "c")
    first = _files(tmp_path / "a")
    assert set(first) >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert _files(tmp_path / "b") == first
    assert _files(tmp_path / "c") == first


def test_saved_as_tokenizers_backend(tokenizer_dir: Path) -> None:
    config = (tokenizer_dir / "tokenizer_config.json").read_text()
    assert '"tokenizer_class": "TokenizersBackend"' in config
    assert '"clean_up_tokenization_spaces": false' in config


def test_markers_are_single_tokens_at_the_end(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) == VOCAB_SIZE
    ids = [tokenizer.encode(marker, add_special_tokens=False) for marker in MARKERS]
    assert ids == [[VOCAB_SIZE - len(MARKERS) + i] for i in range(len(MARKERS))]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None


def test_only_chatml_tokens_are_skipped(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == (
        "assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    )


def test_round_trip_unicode(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "Un café naïve 日本語のテキスト 🙂🎉 and\ttabs,  double  spaces\n\nand \u00a0nbsp"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # Token boundaries inside multi-byte characters are fine as long as the whole decodes.
    assert len(ids) < len(text.encode())


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_any_text(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
