"""A word-level CLIP tokenizer for the demo vocabulary, written as CLIP's vocab.json + merges.txt.

CLIP's tokenizer is byte-level BPE. The vocabulary holds all 256 byte symbols (alone and with the
end-of-word marker ``</w>``), so any text tokenizes: unknown words fall back to pieces or characters.
The merges are chosen so that every word of :data:`VOCABULARY` becomes exactly one token: for each
word, BPE is simulated with the merges so far and, while the word is still in pieces, a merge of its
first two pieces is appended. An appended merge can only apply to words still in pieces, so words
already whole stay whole.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from devtools.demo.vocabulary import VOCABULARY

__all__ = ["BOS", "EOS", "MODEL_MAX_LENGTH", "build_vocab_and_merges", "write_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 32
END = "</w>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair of lowest rank (all its occurrences)."""
    word = list(symbols)
    while len(word) > 1:
        pairs = set(itertools.pairwise(word))
        best = min(pairs, key=lambda p: ranks.get(p, 1 << 30))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def build_vocab_and_merges(words: Iterable[str] = VOCABULARY) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and merges making every word in ``words`` a single token."""
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    tokens: list[str] = base + [b + END for b in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    known = set(tokens)
    for word in sorted(set(words)):
        chars = [byte_map[b] for b in word.lower().encode("utf-8")]
        symbols = [*chars[:-1], chars[-1] + END]
        pieces = _bpe(symbols, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in known:
                known.add(pair[0] + pair[1])
                tokens.append(pair[0] + pair[1])
            pieces = _bpe(symbols, ranks)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: str | Path, words: Iterable[str] = VOCABULARY) -> Path:
    """Write vocab.json, merges.txt and the configs that ``CLIPTokenizer.from_pretrained`` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2 (multidiffusion demo: one token per vocabulary word)"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return folder
