"""Fill-in-the-middle tokens found in a vocabulary, and the prompt each token set makes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cortex.neuron import fim
from cortex.testing.tokenizer import build_tokenizer, corpus_text, make_tokenizer, token_id

PROMPT = "def add(a, b):\n    "
SUFFIX = "\n    return c"

QWEN = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
STARCODER = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
DEEPSEEK = ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")
CODELLAMA = ("▁<PRE>", "▁<SUF>", "▁<MID>")


def _with_bos(tokenizer: PreTrainedTokenizerFast, bos: str) -> PreTrainedTokenizerFast:
    """``tokenizer`` putting ``bos`` before every text it encodes, as Llama's do."""
    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, token_id(tokenizer, bos))]
    )
    return tokenizer


def _byte_level(
    specials: Sequence[str], markers: Sequence[str], *, eos: str, bos: str | None = None
) -> PreTrainedTokenizerFast:
    tokenizer = make_tokenizer(
        special_tokens=specials,
        control_tokens=markers,
        bos=bos,
        eos=eos,
        pad=None,
        template="",
    )
    return _with_bos(tokenizer, bos) if bos is not None else tokenizer


def _sentencepiece_like(markers: Sequence[str]) -> PreTrainedTokenizerFast:
    """A tokenizer shaped like CodeLlama's: a space before every text (the normalizer's
    ``▁``), spaces as ``▁``, ``<s>`` first, the markers as special added tokens."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    text = corpus_text()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=sorted(set(text.replace(" ", "▁")) | {"▁", "☺"}),
        show_progress=False,
    )
    backend.train_from_iterator(text.split("\n\n"), trainer=trainer)
    backend.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in markers])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    return _with_bos(tokenizer, "<s>")


@pytest.fixture(scope="module")
def qwen() -> PreTrainedTokenizerFast:
    return _byte_level(("<|endoftext|>", "<|im_end|>"), QWEN, eos="<|im_end|>")


def _ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_qwen_tokens_make_prefix_suffix_middle(qwen: PreTrainedTokenizerFast) -> None:
    found = fim.detect(qwen)
    assert found is not None
    assert (found.layout, found.names) == ("psm", QWEN)
    ids = [token_id(qwen, name) for name in QWEN]
    assert (found.prefix, found.suffix, found.middle) == tuple(ids)
    # <|endoftext|> ends an infill even where the chat's EOS is <|im_end|>.
    assert found.ends == {token_id(qwen, "<|endoftext|>")}
    prompt = fim.fim_prompt_ids(qwen, found, PROMPT, SUFFIX)
    assert prompt == [ids[0], *_ids(qwen, PROMPT), ids[1], *_ids(qwen, SUFFIX), ids[2]]
    assert qwen.decode(prompt) == f"<|fim_prefix|>{PROMPT}<|fim_suffix|>{SUFFIX}<|fim_middle|>"


def test_starcoder_spelling_is_the_same_layout() -> None:
    tokenizer = _byte_level(("<|endoftext|>",), STARCODER, eos="<|endoftext|>")
    found = fim.detect(tokenizer)
    assert found is not None
    assert (found.layout, found.names) == ("psm", STARCODER)
    prompt = fim.fim_prompt_ids(tokenizer, found, PROMPT, SUFFIX)
    assert tokenizer.decode(prompt) == f"<fim_prefix>{PROMPT}<fim_suffix>{SUFFIX}<fim_middle>"


def test_deepseek_tokens_with_its_bos_first() -> None:
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tokenizer = _byte_level((bos, eos), DEEPSEEK, eos=eos, bos=bos)
    found = fim.detect(tokenizer)
    assert found is not None
    assert (found.layout, found.names) == ("psm", DEEPSEEK)
    prompt = fim.fim_prompt_ids(tokenizer, found, PROMPT, SUFFIX)
    assert prompt[0] == token_id(tokenizer, bos)
    assert tokenizer.decode(prompt) == (
        f"{bos}<｜fim▁begin｜>{PROMPT}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>"
    )


def test_codellama_puts_one_space_before_the_prompt_and_none_before_the_suffix() -> None:
    tokenizer = _byte_level(("<s>", "</s>"), (*CODELLAMA, "▁<EOT>"), eos="</s>", bos="<s>")
    found = fim.detect(tokenizer)
    assert found is not None
    assert (found.layout, found.names) == ("codellama", CODELLAMA)
    assert found.ends == {token_id(tokenizer, "▁<EOT>")}
    pre, suf, mid = (token_id(tokenizer, name) for name in CODELLAMA)
    prompt = fim.fim_prompt_ids(tokenizer, found, PROMPT, SUFFIX)
    bos = token_id(tokenizer, "<s>")
    # " <PRE> {prompt} <SUF>{suffix} <MID>": the spaces around the markers are their ▁.
    expected = [bos, pre, *_ids(tokenizer, " " + PROMPT), suf, *_ids(tokenizer, SUFFIX), mid]
    assert prompt == expected


def test_codellama_spacing_on_a_tokenizer_that_adds_a_space_itself() -> None:
    tokenizer = _sentencepiece_like((*CODELLAMA, "▁<EOT>"))
    found = fim.detect(tokenizer)
    assert found is not None
    assert found.layout == "codellama"
    prompt = fim.fim_prompt_ids(tokenizer, found, "def f(x):", "return x")
    tokens = tokenizer.convert_ids_to_tokens(prompt)
    pre, suf = tokens.index("▁<PRE>"), tokens.index("▁<SUF>")
    assert tokens[: pre + 1] == ["<s>", "▁<PRE>"]
    # The prompt with one space (the tokenizer's own ▁), the suffix with none.
    assert tokens[pre + 1 : suf] == tokenizer.convert_ids_to_tokens(_ids(tokenizer, "def f(x):"))
    assert tokens[pre + 1].startswith("▁")
    assert not tokens[pre + 1].startswith("▁▁")
    after = tokens[suf + 1 : -1]
    assert after
    assert not after[0].startswith("▁")
    assert "".join(after).replace("▁", " ") == "return x"
    assert tokens[-1] == "▁<MID>"


def test_codellama_markers_without_their_space_are_found_too() -> None:
    tokenizer = _byte_level(("<s>", "</s>"), ("<PRE>", "<SUF>", "<MID>", "<EOT>"), eos="</s>")
    found = fim.detect(tokenizer)
    assert found is not None
    assert (found.layout, found.names) == ("codellama", ("<PRE>", "<SUF>", "<MID>"))
    assert found.ends == {token_id(tokenizer, "<EOT>")}


def test_no_fim_tokens_no_layout() -> None:
    assert fim.detect(build_tokenizer()) is None
    # Two of the three are not a set.
    partial = _byte_level(("<|endoftext|>",), QWEN[:2], eos="<|endoftext|>")
    assert fim.detect(partial) is None


def test_plain_prompts_get_the_bos_where_the_tokenizer_adds_one(
    qwen: PreTrainedTokenizerFast,
) -> None:
    assert fim.text_prompt_ids(qwen, "Hello there") == _ids(qwen, "Hello there")
    llama = _sentencepiece_like(CODELLAMA)
    ids = fim.text_prompt_ids(llama, "Hello there")
    assert ids == llama.encode("Hello there", add_special_tokens=True)
    assert ids[0] == token_id(llama, "<s>")
