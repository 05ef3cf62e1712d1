"""Building the tiny embedding model folders (see the package docstring), and their cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tokenizer_trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen3Model

from cortex.testing.model import cached_folder, qwen3_config, save_model, source_digest
from cortex.testing.model import write_atomically as _write_atomically
from cortex.testing.tokenizer import ENDOFTEXT, build_tokenizer, corpus_text, token_id

__all__ = ["POOLINGS", "Pooling", "build_embedding_model", "cached_embedding_model"]

Pooling = Literal["mean", "cls", "lasttoken"]
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)

CONTEXT_LENGTH = 128  # small, so that a test can pass it
_SEED = 1919
_WORDPIECE_VOCAB = 1000
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# sentence-transformers' own names for its modules, as real model folders carry them.
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"


def _wordpiece() -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer trained on the corpus: ``[CLS] text [SEP]``."""
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = tokenizer_trainers.WordPieceTrainer(
        vocab_size=_WORDPIECE_VOCAB, special_tokens=list(_BERT_SPECIALS), show_progress=False
    )
    backend.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=CONTEXT_LENGTH,
    )


def _bert(tokenizer: PreTrainedTokenizerFast) -> BertModel:
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=CONTEXT_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(_SEED)
    return BertModel(config)  # type: ignore[no-untyped-call,unused-ignore]


def _last_token_tokenizer() -> PreTrainedTokenizerFast:
    """The chat fixtures' BPE, appending ``<|endoftext|>`` to every text and padding on the
    left, as Qwen3-Embedding's tokenizer does."""
    tokenizer = build_tokenizer(context_length=CONTEXT_LENGTH)
    end = token_id(tokenizer, ENDOFTEXT)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {ENDOFTEXT}",
        pair=f"$A {ENDOFTEXT} $B:1 {ENDOFTEXT}:1",
        special_tokens=[(ENDOFTEXT, end)],
    )
    return tokenizer


def _qwen3(tokenizer: PreTrainedTokenizerFast) -> Qwen3Model:
    end = token_id(tokenizer, ENDOFTEXT)
    config = qwen3_config(
        vocab_size=len(tokenizer),
        context_length=CONTEXT_LENGTH,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
    )
    torch.manual_seed(_SEED)
    return Qwen3Model(config)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _update_json(path: Path, **changes: Any) -> None:
    _write_json(path, {**json.loads(path.read_text()), **changes})


def _sentence_transformers_files(out_dir: Path, pooling: Pooling, width: int) -> None:
    """The files sentence-transformers reads: which modules, how they pool, the lengths."""
    normalize = pooling != "cls"
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": _POOLING},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _NORMALIZE})
        (out_dir / "2_Normalize").mkdir()
    _write_json(out_dir / "modules.json", modules)
    # The long-standing layout of 1_Pooling/config.json, one switch per mode.
    _write_json(
        out_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": width,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": pooling == "lasttoken",
            "include_prompt": True,
        },
    )
    _write_json(
        out_dir / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    _write_json(
        out_dir / "sentence_bert_config.json",
        {"max_seq_length": CONTEXT_LENGTH, "do_lower_case": False},
    )


def _write(out_dir: Path, pooling: Pooling) -> None:
    model: BertModel | Qwen3Model
    if pooling == "lasttoken":
        tokenizer = _last_token_tokenizer()
        model = _qwen3(tokenizer)
    else:
        tokenizer = _wordpiece()
        model = _bert(tokenizer)
    tokenizer.save_pretrained(str(out_dir))
    save_model(model, out_dir)  # type: ignore[arg-type]
    if pooling == "lasttoken":
        # Qwen3-Embedding's config names the causal LM though its weights have no head: the
        # sentence-transformers files, not the architecture, make it an embedding model.
        _update_json(out_dir / "config.json", architectures=["Qwen3ForCausalLM"])
        _update_json(out_dir / "tokenizer_config.json", padding_side="left")
    _sentence_transformers_files(out_dir, pooling, model.config.hidden_size)
    for path in out_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_embedding_model(out_dir: Path, pooling: Pooling = "mean") -> Path:
    """Write the tiny embedding model with ``pooling`` at ``out_dir`` (atomically)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return _write_atomically(Path(out_dir), lambda staging: _write(staging, pooling))


def cached_embedding_model(pooling: Pooling = "mean", cache_dir: Path | None = None) -> Path:
    """The folder for ``pooling`` from the content-addressed cache, built once per machine."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    key = source_digest(
        {"embedding": pooling, "seed": _SEED, "context": CONTEXT_LENGTH},
        sources=(Path(__file__).resolve(),),
    )
    return cached_folder(
        cache_dir,
        f"embedding-{pooling}-{key}",
        lambda target: build_embedding_model(target, pooling),
    )
