"""Task heads on one shared BERT encoder.

A task's head is chosen by its kind (one sentence, a pair, or an NLI triplet) and the config: pooling, bi- or
cross-encoding, and for similarity a cosine or a learned regressor. Every head with parameters is an `MLP`:
`heads.hidden_layers` hidden layers (0 = the linear head; `heads.task_hidden_layers` per task) before its output
layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert.modeling import ACTIVATIONS as ENCODER_ACTIVATIONS
from jaxbert.modeling import PAL_FUNCTIONS, BertConfig, BertModel, Execution, ProjectedAttention, dense_init

Array = jax.Array
Dtype = Any

# task → number of logits of its single-sentence classifier, or None for pair tasks.
NUM_CLASSES = {"sst": 5, "cfimdb": 2, "tweet": 5}
PAIR_TASKS = ("para", "sts")
# Tasks trained through another task's parameters (head and PALs): tweet sentiment through SST's classifier,
# NLI triplets through the STS head's projection (report 001 shares that layer between the two).
SHARED_HEADS = {"tweet": "sst", "nli": "sts"}
# The input suffixes of the sentences an encoding stacks into one encoder call.
SENTENCES = {"single": ("",), "cross": ("",), "bi": ("", "_b"), "triplet": ("", "_b", "_c")}
COSINE_HEADS = ("cosine", "sigmoid_cosine")
HEAD_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": ENCODER_ACTIVATIONS["relu"],
    "gelu": ENCODER_ACTIVATIONS["gelu"],  # exact erf GELU, as in the encoder
    "tanh": jnp.tanh,
    "squared_relu": lambda x: jnp.square(jax.nn.relu(x)),  # So et al. 2021 (Primer); report 001's SST head
}


def head_of(task: str) -> str:
    """The task whose parameters `task` trains (itself unless it borrows another's)."""
    return SHARED_HEADS.get(task, task)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The static, hashable part of `HeadsConfig` that shapes the network."""

    dropout: float = 0.1
    sst_pooling: str = "cls"
    pair_pooling: str = "cls"
    para_encoding: str = "cross"
    sts_encoding: str = "bi"
    sts_head: str = "cosine"
    cosine_scale: float = 20.0  # sigmoid_cosine's s in 5·σ(s·cos): report 002 multiplies the cosine by 20
    hidden_layers: int = 0
    task_hidden_layers: tuple[tuple[str, int], ...] = ()  # (task, layers) overrides; a mapping is accepted too
    hidden_size: int | None = None  # None: the encoder's hidden size
    activation: str = "relu"
    classifier_activation: str = "none"  # on the sentiment classifiers' logits: report 001's squared_relu
    pal_size: int = 0  # width of each task's projected attention layers (PALs); 0 = none, 204 in the paper
    pal_heads: int = 12
    pal_function: str = "attention"  # attention | identity (report 004: TS(h) = V^D V^E h)

    def __post_init__(self):
        if self.pal_heads < 1:
            raise ValueError(f"pal_heads must be positive, got {self.pal_heads}")
        if self.pal_size < 0 or self.pal_size % self.pal_heads:
            raise ValueError(f"pal_size {self.pal_size} is neither 0 (no PALs) nor a positive multiple of "
                             f"pal_heads {self.pal_heads}")
        if self.pal_function not in PAL_FUNCTIONS:
            raise ValueError(f"pal_function {self.pal_function!r} is not one of {', '.join(PAL_FUNCTIONS)}")
        # Stored as sorted pairs so the spec stays hashable.
        object.__setattr__(self, "task_hidden_layers", tuple(sorted(dict(self.task_hidden_layers).items())))
        for task, layers in (("hidden_layers", self.hidden_layers), *self.task_hidden_layers):
            if layers < 0:
                raise ValueError(f"hidden_layers must be non-negative, got {layers} for {task}")
        borrowed = [task for task, _ in self.task_hidden_layers if task in SHARED_HEADS]
        if borrowed:
            raise ValueError(f"task_hidden_layers: {', '.join(borrowed)} train another task's head "
                             f"({', '.join(f'{t} → {SHARED_HEADS[t]}' for t in borrowed)}); set that task's depth")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be positive or None, got {self.hidden_size}")
        if self.activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(HEAD_ACTIVATIONS)}")
        if self.classifier_activation != "none" and self.classifier_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"classifier_activation {self.classifier_activation!r} is not one of none, "
                             f"{', '.join(HEAD_ACTIVATIONS)}")

    def encoding(self, task: str) -> str:
        """single | cross | bi | triplet: how `task`'s sentences reach the encoder."""
        return {"para": self.para_encoding, "sts": self.sts_encoding, "nli": "triplet"}.get(task, "single")

    def layers(self, task: str) -> int:
        """Hidden layers of the head `task` trains."""
        return dict(self.task_hidden_layers).get(head_of(task), self.hidden_layers)

    def projects(self, task: str) -> bool:
        """Whether `task`'s sentence embeddings go through a learned projection before a cosine.

        A cosine STS head on bi-encoded pairs with hidden layers projects each sentence with them (report 002's
        "linear layer on each embedding, then cosine"; report 001's layer shared with NLI).
        """
        return (head_of(task) == "sts" and self.sts_encoding == "bi" and self.sts_head in COSINE_HEADS
                and self.layers(task) > 0)


class MLP(nn.Module):
    """`[..., d_in]` → `[..., features]`: `hidden_layers` × (dense → activation → dropout), then a dense output.

    The output layer's `kernel`/`bias` sit at the module's own level, so with no hidden layers the module has
    exactly the parameters (and outputs) of the single `nn.Dense` it reduces to. Hidden layers are `hidden_<i>`.
    """

    features: int
    hidden_layers: int = 0
    hidden_size: int = 768
    activation: str = "relu"
    dropout: float = 0.1
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        dense = lambda n, name: nn.Dense(n, kernel_init=self.kernel_init, dtype=self.dtype,  # noqa: E731
                                         param_dtype=self.param_dtype, name=name)
        self.hidden = [dense(self.hidden_size, f"hidden_{i}") for i in range(self.hidden_layers)]
        self.drop = nn.Dropout(self.dropout)
        self.output = dense(self.features, None)
        nn.share_scope(self, self.output)

    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        for layer in self.hidden:
            x = self.drop(HEAD_ACTIVATIONS[self.activation](layer(x)), deterministic=deterministic)
        return self.output(x)


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


def stack_sentences(batch: dict[str, Array], suffixes: tuple[str, ...]) -> dict[str, Array]:
    """A bi-encoded pair's (or a triplet's) sentences as one `[k * batch, seq]` batch: one encoder call."""
    return {k: jnp.concatenate([batch[k + s] for s in suffixes]) for k in ("input_ids", "attention_mask",
                                                                           "token_type_ids")}


class MultitaskBert(nn.Module):
    """One encoder, one head per task. `params` = {"bert": encoder, "<task>": head, "pal_<task>": its PALs}.

    A task in `SHARED_HEADS` has no parameters of its own: it trains those of the task it names.
    """

    config: BertConfig
    tasks: tuple[str, ...]
    heads: HeadSpec = HeadSpec()
    freeze_encoder: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    def pooling(self, task: str) -> str:
        """How `task`'s sentence embeddings pool the encoder's output: `sst_pooling` for one sentence,
        `pair_pooling` for the sentences of a pair or a triplet and for a cross-encoded pair."""
        return self.heads.sst_pooling if self.heads.encoding(task) == "single" else self.heads.pair_pooling

    def encoder_input_shape(self, task: str, batch: dict[str, Array]) -> tuple[int, int, int]:
        """Shape `[sequences, seq, hidden]` of the embedding-layer output for `task`'s batch."""
        rows, length = batch["input_ids"].shape
        return (len(SENTENCES[self.heads.encoding(task)]) * rows, length, self.config.hidden_size)

    def setup(self):
        self.bert = BertModel(self.config, self.dtype, self.param_dtype, self.execution)
        self.dropout = nn.Dropout(self.heads.dropout)
        spec = self.heads
        mlp = lambda features, layers, name: MLP(  # noqa: E731
            features, layers, spec.hidden_size or self.config.hidden_size, spec.activation, spec.dropout,
            dense_init(self.config), self.dtype, self.param_dtype, name=name)
        owners = sorted({head_of(task) for task in self.tasks})
        head = {}
        for name in owners:
            if spec.projects(name):
                # The projection's last layer is linear: the cosine takes the place of an activation.
                head[name] = mlp(spec.hidden_size or self.config.hidden_size, spec.layers(name) - 1, name)
            elif name == "sts" and ("sts" not in self.tasks or (spec.sts_encoding == "bi"
                                                                 and spec.sts_head in COSINE_HEADS)):
                continue  # a cosine has no parameters, and nli reads only the embeddings
            else:
                head[name] = mlp(NUM_CLASSES.get(name, 1), spec.layers(name), name)
        self.head = head
        # Owned here, not by `bert`, so each task's PALs are a top-level key of their own, like its head.
        self.pal = {task: ProjectedAttention(self.config, spec.pal_size, spec.pal_heads, spec.pal_function,
                                             self.dtype, self.param_dtype, self.execution, name=f"pal_{task}")
                    for task in owners} if spec.pal_size else {}

    def embed_sentences(self, task: str, batch: dict[str, Array], pooling: str, deterministic: bool,
                        perturbation: Array | None = None) -> Array:
        """Pooled `[batch, hidden]` embeddings of the sequences `input_ids` etc., through `task`'s PALs if any.

        `perturbation` `[batch, seq, hidden]` is added to the embedding-layer output (SMART's adversarial input).
        """
        mask = batch["attention_mask"]
        embeddings = self.bert.embed(batch["input_ids"], batch["token_type_ids"], deterministic)
        if perturbation is not None:
            embeddings = embeddings + perturbation.astype(embeddings.dtype)
        adapter = self.pal[head_of(task)] if self.pal else None
        out = self.bert.encode(embeddings, mask, deterministic, adapter)
        # PALs sit inside the encoder, so their gradient needs its backward pass; `partly_frozen_optimizer`
        # still keeps the encoder's own weights fixed.
        if self.freeze_encoder and adapter is None:
            out = jax.lax.stop_gradient(out)
        return pool(out["last_hidden_state"], out["pooler_output"], mask, pooling)

    def __call__(self, task: str, batch: dict[str, Array], deterministic: bool = True,
                 perturbation: Array | None = None, return_embeddings: bool = False):
        """Returns logits `[batch, classes]` (sst, cfimdb, tweet), a logit `[batch]` (para), a score `[batch]`
        (sts), or for nli the sentence embeddings `[3 * batch, d]` (premises, entailments, contradictions).

        Args:
          task: one of `self.tasks`.
          batch: `input_ids`, `attention_mask`, `token_type_ids` `[batch, seq]`; a bi-encoded pair adds the
            second sentence's arrays with the suffix `_b`, a triplet also the third's with `_c`.
          perturbation: added to the embedding-layer output, shaped `encoder_input_shape(task, batch)`.
          return_embeddings: also return the sentence embeddings the head read, `[batch, hidden]`, or
            `[k * batch, d]` (first sentences, then second ones, ...) for a bi-encoded pair or a triplet:
            `(output, embeddings)`. They are the pooled encoder outputs, projected when `heads.projects(task)`.
        """
        encoding = self.heads.encoding(task)
        if encoding in ("single", "cross"):
            embeddings = self.embed_sentences(task, batch, self.pooling(task), deterministic, perturbation)
            logits = self.head[head_of(task)](self.dropout(embeddings, deterministic=deterministic), deterministic)
            if task not in NUM_CLASSES:
                output = logits[:, 0]
            elif self.heads.classifier_activation == "none":
                output = logits
            else:
                output = HEAD_ACTIVATIONS[self.heads.classifier_activation](logits)
        else:
            embeddings = self.embed_sentences(task, stack_sentences(batch, SENTENCES[encoding]),
                                              self.pooling(task), deterministic, perturbation)
            if self.heads.projects(task):
                embeddings = self.head[head_of(task)](self.dropout(embeddings, deterministic=deterministic),
                                                      deterministic)
            output = embeddings if encoding == "triplet" else self.pair_head(task, *jnp.split(embeddings, 2),
                                                                             deterministic)
        return (output, embeddings) if return_embeddings else output

    def pair_head(self, task: str, u: Array, v: Array, deterministic: bool) -> Array:
        """`[batch]` score or logit from the two sentences' `[batch, d]` embeddings."""
        if task == "sts" and self.heads.sts_head == "cosine":
            # Negative similarity is clamped to 0 so the 0–5 scale maps onto cosines in [0, 1].
            return 5.0 * jax.nn.relu(cosine(u, v))
        if task == "sts" and self.heads.sts_head == "sigmoid_cosine":
            # Report 002 (scale 20): σ(cos) alone would stay within [0.27, 0.73], a fraction of the 0–5 range.
            return 5.0 * jax.nn.sigmoid(self.heads.cosine_scale * cosine(u, v))
        if task == "sts" and self.heads.sts_head == "cosine_concat":
            features = jnp.concatenate([u, v, cosine(u, v)[:, None].astype(u.dtype)], -1)  # [batch, 2d + 1]
        else:  # the Sentence-BERT classifier features
            features = jnp.concatenate([u, v, jnp.abs(u - v), u * v], -1)  # [batch, 4d]
        return self.head[task](self.dropout(features, deterministic=deterministic), deterministic)[:, 0]
