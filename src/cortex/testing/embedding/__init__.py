"""Tiny sentence-embedding models for the neuron's ``/v1/embeddings`` tests and bench.

``cached_embedding_model(pooling)`` returns a folder laid out as sentence-transformers saves
one (``modules.json``, ``1_Pooling/config.json``, ``config_sentence_transformers.json``,
``sentence_bert_config.json``) around random (seeded) weights, built once per machine:

* ``mean``: a BERT encoder with a WordPiece tokenizer (``[CLS] … [SEP]``), mean pooling and
  a ``Normalize`` module (all-MiniLM style);
* ``cls``: the same encoder with CLS pooling and no ``Normalize`` (BGE without its
  normalisation), so vectors keep their length;
* ``lasttoken``: a Qwen3 decoder without an LM head whose tokenizer appends
  ``<|endoftext|>``, last-token pooling and ``Normalize``; its ``config.json`` names
  ``Qwen3ForCausalLM``, as Qwen3-Embedding's does.

A subpackage, so that its files do not enter the cache keys of the chat fixtures.
"""

from __future__ import annotations

from cortex.testing.embedding.build import (
    POOLINGS,
    Pooling,
    build_embedding_model,
    cached_embedding_model,
)

__all__ = ["POOLINGS", "Pooling", "build_embedding_model", "cached_embedding_model"]
