"""Task heads on one shared BERT encoder.

A task's head is chosen by its kind (one sentence, or a pair) and the config: pooling, bi- or
cross-encoding, and for similarity a cosine or a learned regressor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert.modeling import BertConfig, BertModel, ProjectedAttention, dense_init

Array = jax.Array
Dtype = Any

# task → number of logits of its single-sentence classifier, or None for pair tasks.
NUM_CLASSES = {"sst": 5, "cfimdb": 2}
PAIR_TASKS = ("para", "sts")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The static, hashable part of `HeadsConfig` that shapes the network."""

    dropout: float = 0.1
    sst_pooling: str = "cls"
    pair_pooling: str = "cls"
    para_encoding: str = "cross"
    sts_encoding: str = "bi"
    sts_head: str = "cosine"
    pal_size: int = 0  # width of each task's projected attention layers (PALs); 0 = none, 204 in the paper
    pal_heads: int = 12

    def __post_init__(self):
        if self.pal_heads < 1:
            raise ValueError(f"pal_heads must be positive, got {self.pal_heads}")
        if self.pal_size < 0 or self.pal_size % self.pal_heads:
            raise ValueError(f"pal_size {self.pal_size} is neither 0 (no PALs) nor a positive multiple of "
                             f"pal_heads {self.pal_heads}")

    def encoding(self, task: str) -> str:
        return {"para": self.para_encoding, "sts": self.sts_encoding}.get(task, "single")


def pool(hidden: Array, pooler_output: Array, mask: Array, how: str) -> Array:
    """Sentence embedding from `[batch, seq, hidden]` states and `[batch, seq]` mask → `[batch, hidden]`."""
    if how == "cls":
        return hidden[:, 0]
    if how == "pooler":
        return pooler_output
    m = mask[..., None].astype(hidden.dtype)
    if how == "mean":
        return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1)
    if how == "max":
        return jnp.where(m > 0, hidden, jnp.finfo(hidden.dtype).min).max(1)
    raise ValueError(f"pooling {how!r} is not one of cls, pooler, mean, max")


def cosine(u: Array, v: Array) -> Array:
    """Row-wise cosine similarity in float32, `[batch, d]` × `[batch, d]` → `[batch]`."""
    u, v = u.astype(jnp.float32), v.astype(jnp.float32)
    eps = 1e-8  # keeps an all-zero embedding (possible after ReLU-like pooling) from dividing by zero
    return (u * v).sum(-1) / jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)


def stack_pair(batch: dict[str, Array]) -> dict[str, Array]:
    """A bi-encoded pair's two sentences as one `[2 * batch, seq]` batch: one encoder call, half the launches."""
    return {k: jnp.concatenate([batch[k], batch[k + "_b"]]) for k in ("input_ids", "attention_mask", "token_type_ids")}


class MultitaskBert(nn.Module):
    """One encoder, one head per task. `params` = {"bert": encoder, "<task>": head, "pal_<task>": its PALs}."""

    config: BertConfig
    tasks: tuple[str, ...]
    heads: HeadSpec = HeadSpec()
    freeze_encoder: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def encoder_input_shape(self, task: str, batch: dict[str, Array]) -> tuple[int, int, int]:
        """Shape `[sequences, seq, hidden]` of the embedding-layer output for `task`'s batch."""
        rows, length = batch["input_ids"].shape
        return (2 * rows if self.heads.encoding(task) == "bi" else rows, length, self.config.hidden_size)

    def setup(self):
        self.bert = BertModel(self.config, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(self.heads.dropout)
        dense = lambda n, name: nn.Dense(n, kernel_init=dense_init(self.config), dtype=self.dtype,  # noqa: E731
                                         param_dtype=self.param_dtype, name=name)
        out = {task: dense(NUM_CLASSES.get(task, 1), task) for task in self.tasks}
        if "sts" in out and self.heads.sts_encoding == "bi" and self.heads.sts_head == "cosine":
            del out["sts"]  # the scaled cosine has no parameters
        self.out = out
        # Owned here, not by `bert`, so each task's PALs are a top-level key of their own, like its head.
        self.pal = {task: ProjectedAttention(self.config, self.heads.pal_size, self.heads.pal_heads, self.dtype,
                                             self.param_dtype, name=f"pal_{task}")
                    for task in self.tasks} if self.heads.pal_size else {}

    def embed_sentences(self, task: str, batch: dict[str, Array], pooling: str, deterministic: bool,
                        perturbation: Array | None = None) -> Array:
        """Pooled `[batch, hidden]` embeddings of the sequences `input_ids` etc., through `task`'s PALs if any.

        `perturbation` `[batch, seq, hidden]` is added to the embedding-layer output (SMART's adversarial input).
        """
        mask = batch["attention_mask"]
        embeddings = self.bert.embed(batch["input_ids"], batch["token_type_ids"], deterministic)
        if perturbation is not None:
            embeddings = embeddings + perturbation.astype(embeddings.dtype)
        adapter = self.pal[task] if self.pal else None
        out = self.bert.encode(embeddings, mask, deterministic, adapter)
        # PALs sit inside the encoder, so their gradient needs its backward pass; `partly_frozen_optimizer`
        # still keeps the encoder's own weights fixed.
        if self.freeze_encoder and adapter is None:
            out = jax.lax.stop_gradient(out)
        return pool(out["last_hidden_state"], out["pooler_output"], mask, pooling)

    def __call__(self, task: str, batch: dict[str, Array], deterministic: bool = True,
                 perturbation: Array | None = None, return_embeddings: bool = False):
        """Returns logits `[batch, classes]` (sst, cfimdb), a logit `[batch]` (para) or a score `[batch]` (sts).

        Args:
          task: one of `self.tasks`.
          batch: `input_ids`, `attention_mask`, `token_type_ids` `[batch, seq]`; a bi-encoded pair adds the
            second sentence's arrays with the suffix `_b`.
          perturbation: added to the embedding-layer output, shaped `encoder_input_shape(task, batch)`.
          return_embeddings: also return the pooled embeddings the head read, `[batch, hidden]`, or
            `[2 * batch, hidden]` (first sentences, then second ones) for a bi-encoded pair: `(output, embeddings)`.
        """
        encoding = self.heads.encoding(task)
        if encoding != "bi":
            pooling = self.heads.sst_pooling if task in NUM_CLASSES else self.heads.pair_pooling
            embeddings = self.embed_sentences(task, batch, pooling, deterministic, perturbation)
            logits = self.out[task](self.dropout(embeddings, deterministic=deterministic))
            output = logits if task in NUM_CLASSES else logits[:, 0]
        else:
            embeddings = self.embed_sentences(task, stack_pair(batch), self.heads.pair_pooling, deterministic,
                                              perturbation)
            output = self.pair_head(task, *jnp.split(embeddings, 2), deterministic)
        return (output, embeddings) if return_embeddings else output

    def pair_head(self, task: str, u: Array, v: Array, deterministic: bool) -> Array:
        """`[batch]` score or logit from the two sentences' `[batch, hidden]` embeddings."""
        if task == "sts" and self.heads.sts_head == "cosine":
            # Negative similarity is clamped to 0 so the 0–5 scale maps onto cosines in [0, 1].
            return 5.0 * jax.nn.relu(cosine(u, v))
        if task == "sts" and self.heads.sts_head == "cosine_concat":
            features = jnp.concatenate([u, v, cosine(u, v)[:, None].astype(u.dtype)], -1)  # [batch, 2d + 1]
        else:  # the Sentence-BERT classifier features
            features = jnp.concatenate([u, v, jnp.abs(u - v), u * v], -1)  # [batch, 4d]
        return self.out[task](self.dropout(features, deterministic=deterministic))[:, 0]
