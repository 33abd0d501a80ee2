"""Tokenizers that need no vocabulary file: UTF-8 bytes, and hashed lower-cased words.

Byte ids are ``byte + 1`` so that 0 is padding. Any string encodes (lone surrogates, emoji,
zero-width characters), and ``bytes`` pass through unchanged, so text that is not valid UTF-8
still reaches the model byte for byte.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import torch

PAD = 0
BYTE_VOCAB = 257  # 256 byte values + padding
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def to_bytes(text: str | bytes) -> bytes:
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    try:
        return text.encode("utf-8", errors="surrogateescape")  # round-trips bytes read with surrogateescape
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace")  # other lone surrogates


def clip(seq: Sequence, max_len: int) -> Sequence:
    """Keep the head and the tail of a long sequence: an injection is often appended at the end
    of a long document, so cutting only the tail would hide exactly what a detector must see."""
    if len(seq) <= max_len:
        return seq
    head = max_len // 2
    return seq[:head] + seq[len(seq) - (max_len - head):]


def encode_bytes(texts: Sequence[str | bytes], max_len: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L] int64, mask [B, L] bool) with L = the longest clipped text (at least 1)."""
    seqs = [clip(to_bytes(t), max_len) for t in texts]
    length = max([len(s) for s in seqs] + [1])
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.frombuffer(bytearray(s), dtype=torch.uint8).long() + 1
    return ids, ids != PAD


def words(text: str | bytes) -> list[str]:
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    return _WORD.findall(text.lower())


def encode_hashed_words(
    texts: Sequence[str | bytes], buckets: int, max_len: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unigrams and bigrams hashed into ``buckets - 1`` ids (1..buckets-1; 0 is padding), as in
    fastText (Joulin et al. 2017): no vocabulary to build, and unseen words still get an id."""
    seqs = []
    for t in texts:
        w = words(t)
        grams = w + [a + " " + b for a, b in zip(w, w[1:])]
        seqs.append(clip([1 + zlib.crc32(g.encode("utf-8", "replace")) % (buckets - 1) for g in grams], max_len))
    length = max([len(s) for s in seqs] + [1])
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, ids != PAD
