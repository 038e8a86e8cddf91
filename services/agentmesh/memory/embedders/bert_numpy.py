"""A BERT sentence encoder in numpy: tokenizer.json + model.safetensors, no torch.

Runs a sentence-transformers model directory of the ``BertModel`` → mean pooling →
normalize kind (all-MiniLM-L6-v2 and its relatives) as sentence-transformers does:
the HF ``tokenizers`` library with the model's ``max_seq_length`` as truncation and
per-batch padding, the encoder in float32 (post-LayerNorm BERT, exact-erf GELU),
the mean of the token vectors under the attention mask, then L2 normalization.
``tests/integration/memory/test_embedders_minilm.py`` checks it against
sentence-transformers' own vectors (ADR 0012).

This module imports the optional ``minilm`` extra at import time: import it only
once ``minilm.check_installed()`` has passed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

Array = npt.NDArray[np.float32]

_DEFAULT_BATCH_SIZE: Final = 64
_DEFAULT_TOKEN_BUDGET: Final = 1024
_GELU_BLOCK: Final = 64 * 1024  # floats per GELU block: 256 KiB, stays in L2 cache

# Abramowitz & Stegun 7.1.26: erf(x) with |error| < 1.5e-7 (float32's own rounding).
# numpy has no erf, and BERT's "gelu" is the exact 0.5·x·(1 + erf(x/√2)), not the
# tanh approximation.
_ERF_P: Final = np.float32(0.3275911)
_ERF_A: Final = tuple(
    np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)


class ModelFormatError(ValueError):
    """The model directory is not one this encoder runs (missing file, other architecture)."""


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: Array  # (hidden, 3·hidden): query, key, value projections side by side
    qkv_b: Array
    attn_out_w: Array  # (hidden, hidden)
    attn_out_b: Array
    attn_ln_g: Array
    attn_ln_b: Array
    ffn_in_w: Array  # (hidden, intermediate)
    ffn_in_b: Array
    ffn_out_w: Array  # (intermediate, hidden)
    ffn_out_b: Array
    out_ln_g: Array
    out_ln_b: Array


def _gelu_(x: Array) -> Array:
    """GELU in place, 0.5·x·(1 + erf(x/√2)), over row blocks that stay in cache."""
    a1, a2, a3, a4, a5 = _ERF_A
    rows = max(1, _GELU_BLOCK // max(1, x.shape[-1]))
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        z = block * np.float32(math.sqrt(0.5))
        # erf(4) is 1 in float32; the clip keeps exp() out of denormals, which are
        # many times slower on x86.
        e = np.abs(z)
        np.minimum(e, np.float32(4.0), out=e)
        t = e * _ERF_P
        t += np.float32(1.0)
        np.reciprocal(t, out=t)
        tail = a5 * t  # Horner: t·(a1 + t·(a2 + …)), then · exp(-|z|²) = 1 - erf(|z|)
        for a in (a4, a3, a2, a1):
            tail += a
            tail *= t
        np.square(e, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)
        tail *= e
        # 1 + erf(z) is 2 - tail for z ≥ 0 and tail below.
        one_plus_erf = np.where(z >= 0, np.float32(2.0) - tail, tail)
        block *= np.float32(0.5)
        block *= one_plus_erf
    return x


def _layer_norm(x: Array, gamma: Array, beta: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    result: Array = centred / np.sqrt(var + np.float32(eps)) * gamma + beta
    return result


def _softmax_last_(x: Array) -> Array:
    """Softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    # exp(-80) is a normal float32 and adds nothing next to the row's own 1.0; lower
    # inputs would make denormal weights, and a matrix product over denormals is
    # many times slower than over normal floats.
    np.maximum(x, np.float32(-80.0), out=x)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    return data


class BertSentenceEncoder:
    """Sentence vectors from a sentence-transformers BERT directory, in numpy float32.

    ``encode`` is synchronous and CPU-bound (numpy's BLAS uses every core for the
    matrix products); it is not meant to be called from two threads at once.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        batch_size: int = _DEFAULT_BATCH_SIZE,
        token_budget: int = _DEFAULT_TOKEN_BUDGET,
    ) -> None:
        config = _read_json(model_dir / "config.json")
        st_config = _read_json(model_dir / "sentence_bert_config.json")
        pooling = _read_json(model_dir / "1_Pooling" / "config.json")
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ModelFormatError(
                f"{model_dir} is not a BERT model with exact GELU (model_type="
                f"{config.get('model_type')!r}, hidden_act={config.get('hidden_act')!r})"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ModelFormatError(f"{model_dir}: only absolute position embeddings are supported")
        other_pooling = [
            k
            for k, v in pooling.items()
            if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"
        ]
        if not pooling.get("pooling_mode_mean_tokens") or other_pooling:
            raise ModelFormatError(f"{model_dir}: only mean pooling is supported, got {pooling}")

        self.dimension = int(config["hidden_size"])
        self._heads = int(config["num_attention_heads"])
        self._head_dim = self.dimension // self._heads
        self._eps = float(config["layer_norm_eps"])
        self._batch_size = batch_size
        self._token_budget = token_budget
        self.max_seq_length = min(
            int(st_config["max_seq_length"]), int(config["max_position_embeddings"])
        )

        try:
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ModelFormatError(f"cannot load {model_dir / 'tokenizer.json'}: {exc}") from exc
        # tokenizer.json carries a fixed 128-token padding and truncation; replace them
        # with what sentence-transformers applies: truncate at max_seq_length. encode()
        # pads each batch to its longest text itself.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)

        try:
            weights = load_file(str(model_dir / "model.safetensors"))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFormatError(f"cannot load {model_dir / 'model.safetensors'}: {exc}") from exc
        self._word, self._position, self._token_type = (
            self._weight(weights, f"embeddings.{name}_embeddings.weight")
            for name in ("word", "position", "token_type")
        )
        self._emb_ln_g = self._weight(weights, "embeddings.LayerNorm.weight")
        self._emb_ln_b = self._weight(weights, "embeddings.LayerNorm.bias")
        self._layers = [
            self._load_layer(weights, f"encoder.layer.{i}.")
            for i in range(int(config["num_hidden_layers"]))
        ]

    @staticmethod
    def _weight(weights: dict[str, npt.NDArray[Any]], name: str) -> Array:
        # Checkpoints saved by older transformers prefix every tensor with "bert.".
        tensor = weights.get(name)
        if tensor is None:
            tensor = weights.get(f"bert.{name}")
        if tensor is None:
            raise ModelFormatError(f"model.safetensors has no tensor {name!r}")
        return np.ascontiguousarray(tensor, dtype=np.float32)

    def _load_layer(self, weights: dict[str, npt.NDArray[Any]], prefix: str) -> _Layer:
        def w(name: str) -> Array:
            return self._weight(weights, prefix + name)

        # torch's Linear stores (out, in); transposed once here so every product is x @ W.
        attn = "attention.self."
        return _Layer(
            qkv_w=np.ascontiguousarray(
                np.concatenate([w(f"{attn}{p}.weight") for p in ("query", "key", "value")]).T
            ),
            qkv_b=np.concatenate([w(f"{attn}{p}.bias") for p in ("query", "key", "value")]),
            attn_out_w=np.ascontiguousarray(w("attention.output.dense.weight").T),
            attn_out_b=w("attention.output.dense.bias"),
            attn_ln_g=w("attention.output.LayerNorm.weight"),
            attn_ln_b=w("attention.output.LayerNorm.bias"),
            ffn_in_w=np.ascontiguousarray(w("intermediate.dense.weight").T),
            ffn_in_b=w("intermediate.dense.bias"),
            ffn_out_w=np.ascontiguousarray(w("output.dense.weight").T),
            ffn_out_b=w("output.dense.bias"),
            out_ln_g=w("output.LayerNorm.weight"),
            out_ln_b=w("output.LayerNorm.bias"),
        )

    def encode(self, texts: list[str]) -> Array:
        """One L2-normalized row per text, in order: shape (len(texts), dimension)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        # Similar lengths batched together pad least (as sentence-transformers does);
        # a batch stops at the token budget so every intermediate array stays small
        # enough to be reused by the allocator and mostly to stay in cache.
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        start = 0
        while start < len(order):
            stop = start + 1
            while (
                stop < len(order)
                and stop - start < self._batch_size
                and (stop - start + 1) * lengths[order[stop]] <= self._token_budget
            ):
                stop += 1
            chunk = order[start:stop]
            seq = lengths[chunk[-1]]
            ids = np.zeros((len(chunk), seq), dtype=np.int64)  # [PAD] is id 0
            type_ids = np.zeros((len(chunk), seq), dtype=np.int64)
            mask = np.zeros((len(chunk), seq), dtype=np.float32)
            for row, i in enumerate(chunk):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                type_ids[row, :n] = encodings[i].type_ids
                mask[row, :n] = 1.0
            out[chunk] = self._pool(self._forward(ids, type_ids, mask), mask)
            start = stop
        return out

    @staticmethod
    def _pool(hidden: Array, mask: Array) -> Array:
        # Mean over real tokens, then unit length (sentence-transformers' Pooling + Normalize).
        summed = np.einsum("bth,bt->bh", hidden, mask)
        counts = np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        pooled = summed / counts
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        result: Array = (pooled / norms).astype(np.float32, copy=False)
        return result

    def _forward(
        self, ids: npt.NDArray[np.int64], type_ids: npt.NDArray[np.int64], mask: Array
    ) -> Array:
        batch, seq = ids.shape
        hid, heads, head_dim = self.dimension, self._heads, self._head_dim
        x = self._word[ids] + self._position[:seq][None, :, :] + self._token_type[type_ids]
        x = _layer_norm(x, self._emb_ln_g, self._emb_ln_b, self._eps).reshape(batch * seq, hid)
        # Padding keys get the most negative float32: after the softmax's clip they
        # weigh exp(-80) ≈ 2e-35 against at least 1, i.e. nothing.
        key_bias = ((np.float32(1.0) - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(head_dim))
        for layer in self._layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (b·t, 3·hid)
            # -> (3, batch, heads, seq, head_dim)
            qkv = qkv.reshape(batch, seq, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q * scale) @ k.transpose(0, 1, 3, 2)  # (b, h, t, t)
            scores += key_bias
            context = _softmax_last_(scores) @ v  # (b, h, t, d)
            context = context.transpose(0, 2, 1, 3).reshape(batch * seq, hid)
            attn = context @ layer.attn_out_w + layer.attn_out_b
            x = _layer_norm(attn + x, layer.attn_ln_g, layer.attn_ln_b, self._eps)
            inner: Array = x @ layer.ffn_in_w
            inner += layer.ffn_in_b
            _gelu_(inner)
            ffn: Array = inner @ layer.ffn_out_w + layer.ffn_out_b
            x = _layer_norm(ffn + x, layer.out_ln_g, layer.out_ln_b, self._eps)
        result: Array = x.reshape(batch, seq, hid)
        return result
