"""Choosing the engine for a load: what auto picks, and the 400s that say why not."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from cortex.errors import InvalidRequest
from cortex.neuron import engines
from cortex.neuron.devices import Device
from cortex.protocol.lifecycle import LoadRequest

CPU = Device(index=0, kind="cpu", name="cpu")


def _folder(tmp_path: Path, **config: object) -> Path:
    base = {
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
    }
    (tmp_path / "config.json").write_text(json.dumps({**base, **config}))
    return tmp_path


@pytest.fixture
def without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)


@pytest.mark.usefixtures("without_vllm")
def test_auto_without_vllm_is_transformers_and_vllm_asked_for_is_a_400(tmp_path: Path) -> None:
    path = _folder(tmp_path, head_dim=64)
    assert engines.choose("auto", path, CPU, LoadRequest(model="m")) == "transformers"
    with pytest.raises(InvalidRequest, match="vLLM is not installed on this node") as refused:
        engines.choose("vllm", path, CPU, LoadRequest(model="m"))
    assert refused.value.param == "engine"


@pytest.mark.usefixtures("without_vllm")
@pytest.mark.parametrize(
    ("fields", "named"), [({"tp": 2}, "tp=2"), ({"quant": "awq"}, "quant=awq")]
)
def test_tp_and_quant_need_vllm(tmp_path: Path, fields: dict[str, object], named: str) -> None:
    path = _folder(tmp_path, head_dim=64)
    request = LoadRequest.model_validate({"model": "m", **fields})
    with pytest.raises(InvalidRequest, match=f"cannot load with {named}"):
        engines.choose("transformers", path, CPU, request)
    with pytest.raises(InvalidRequest, match=f"with {named} needs the vLLM engine"):
        engines.choose("auto", path, CPU, request)
    # Their neutral values ask for nothing.
    neutral = LoadRequest(model="m", tp=1, quant="none")
    assert engines.choose("transformers", path, CPU, neutral) == "transformers"


def test_a_head_size_vllms_cpu_attention_refuses_keeps_auto_on_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decided from config.json alone: vLLM is not even imported for it."""
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it would fail the test
    path = _folder(tmp_path, head_dim=16)
    assert engines.choose("auto", path, CPU, LoadRequest(model="m")) == "transformers"
    with pytest.raises(InvalidRequest, match="does not take a head size of 16"):
        engines.choose("vllm", path, CPU, LoadRequest(model="m"))


def test_head_size_and_kv_bytes_per_token_from_config() -> None:
    config = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}
    assert engines.head_dim(config) == 16
    assert engines.head_dim({**config, "head_dim": 64}) == 64
    # Keys and values, per layer, per KV head (the attention heads without GQA).
    assert engines.kv_bytes_per_token({**config, "num_key_value_heads": 2}, 4) == 2 * 2 * 2 * 16 * 4
    assert engines.kv_bytes_per_token(config, 2) == 2 * 2 * 4 * 16 * 2
    assert engines.kv_bytes_per_token({}, 4) is None


def test_visible_gpus_count_within_what_the_process_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = Device(index=1, kind="cuda", name="gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    with engines.visible_gpus(gpu, 2):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"
    with engines.visible_gpus(CPU, 1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"
