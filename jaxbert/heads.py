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

from jaxbert.modeling import BertConfig, BertModel, dense_init

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


class MultitaskBert(nn.Module):
    """One encoder, one head per task. `params` = {"bert": encoder, "<task>": head}."""

    config: BertConfig
    tasks: tuple[str, ...]
    heads: HeadSpec = HeadSpec()
    freeze_encoder: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.bert = BertModel(self.config, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(self.heads.dropout)
        dense = lambda n, name: nn.Dense(n, kernel_init=dense_init(self.config), dtype=self.dtype,  # noqa: E731
                                         param_dtype=self.param_dtype, name=name)
        out = {task: dense(NUM_CLASSES.get(task, 1), task) for task in self.tasks}
        if "sts" in out and self.heads.sts_encoding == "bi" and self.heads.sts_head == "cosine":
            del out["sts"]  # the scaled cosine has no parameters
        self.out = out

    def embed_sentences(self, batch: dict[str, Array], suffix: str, pooling: str, deterministic: bool) -> Array:
        """Pooled `[batch, hidden]` embeddings of the sequences `input_ids{suffix}` etc."""
        mask = batch["attention_mask" + suffix]
        out = self.bert(batch["input_ids" + suffix], mask, batch["token_type_ids" + suffix], deterministic)
        if self.freeze_encoder:
            out = jax.lax.stop_gradient(out)
        return pool(out["last_hidden_state"], out["pooler_output"], mask, pooling)

    def __call__(self, task: str, batch: dict[str, Array], deterministic: bool = True) -> Array:
        """Returns logits `[batch, classes]` (sst, cfimdb), a logit `[batch]` (para) or a score `[batch]` (sts).

        Args:
          task: one of `self.tasks`.
          batch: `input_ids`, `attention_mask`, `token_type_ids` `[batch, seq]`; a bi-encoded pair adds the
            second sentence's arrays with the suffix `_b`.
        """
        encoding = self.heads.encoding(task)
        if encoding != "bi":
            pooling = self.heads.sst_pooling if task in NUM_CLASSES else self.heads.pair_pooling
            x = self.dropout(self.embed_sentences(batch, "", pooling, deterministic), deterministic=deterministic)
            logits = self.out[task](x)
            return logits if task in NUM_CLASSES else logits[:, 0]

        # Both sentences go through the encoder in one call: half the launches, same arithmetic.
        both = {k: jnp.concatenate([batch[k], batch[k + "_b"]]) for k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}
        u, v = jnp.split(self.embed_sentences(both, "", self.heads.pair_pooling, deterministic), 2)
        if task == "sts" and self.heads.sts_head == "cosine":
            # Negative similarity is clamped to 0 so the 0–5 scale maps onto cosines in [0, 1].
            return 5.0 * jax.nn.relu(cosine(u, v))
        if task == "sts" and self.heads.sts_head == "cosine_concat":
            features = jnp.concatenate([u, v, cosine(u, v)[:, None].astype(u.dtype)], -1)  # [batch, 2d + 1]
        else:  # the Sentence-BERT classifier features
            features = jnp.concatenate([u, v, jnp.abs(u - v), u * v], -1)  # [batch, 4d]
        return self.out[task](self.dropout(features, deterministic=deterministic))[:, 0]
