"""Task heads on one shared BERT encoder.

A task's head follows from its `jaxbert.tasks.Task` (one sentence, a pair or a triplet; classification or
regression) and `HeadsConfig`: pooling, bi- or cross-encoding, and for a regression pair a cosine or a learned
regressor. Every head with parameters is an `MLP`: `heads.hidden_layers` hidden layers (0 = the linear head;
`heads.task_hidden_layers` per task) before its output layer. A task whose `Task.head` names another trains
that task's head and PALs.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert import tasks as task_registry
from jaxbert.config import HeadsConfig
from jaxbert.modeling import ACTIVATIONS as ENCODER_ACTIVATIONS
from jaxbert.modeling import BertConfig, BertModel, Execution, ProjectedAttention, dense_init
from jaxbert.tasks import Task

Array = jax.Array
Dtype = Any

# The input suffixes of the sentences an encoding stacks into one encoder call.
SENTENCES = {"single": ("",), "cross": ("",), "bi": ("", "_b"), "triplet": ("", "_b", "_c")}
HEAD_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {  # the functions of `choices.HEAD_ACTIVATIONS`
    "relu": ENCODER_ACTIVATIONS["relu"],
    "gelu": ENCODER_ACTIVATIONS["gelu"],  # exact erf GELU, as in the encoder
    "tanh": jnp.tanh,
    "squared_relu": lambda x: jnp.square(jax.nn.relu(x)),  # So et al. 2021 (Primer); report 001's SST head
}


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

    A task whose `Task.head` names another has no parameters of its own: it trains those of the task it names.
    """

    config: BertConfig
    tasks: tuple[Task, ...]
    heads: HeadsConfig = HeadsConfig()
    freeze_encoder: bool = False
    freeze_pals: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    def task(self, name: str) -> Task:
        """The run's task `name`, or the registry's for an owner no run task is (nli alone trains STS's head)."""
        return next((task for task in self.tasks if task.name == name), None) or task_registry.get(name)

    def encoder_input_shape(self, task: str, batch: dict[str, Array]) -> tuple[int, int, int]:
        """Shape `[sequences, seq, hidden]` of the embedding-layer output for `task`'s batch."""
        rows, length = batch["input_ids"].shape
        return (len(SENTENCES[self.heads.encoding(self.task(task))]) * rows, length, self.config.hidden_size)

    def setup(self):
        self.bert = BertModel(self.config, self.dtype, self.param_dtype, self.execution)
        self.dropout = nn.Dropout(self.heads.dropout)
        spec = self.heads
        mlp = lambda features, layers, name: MLP(  # noqa: E731
            features, layers, spec.hidden_size or self.config.hidden_size, spec.activation, spec.dropout,
            dense_init(self.config), self.dtype, self.param_dtype, name=name)
        owners = [self.task(name) for name in sorted({task.owner for task in self.tasks})]
        head = {}
        for owner in owners:
            readers = [task for task in self.tasks if task.owner == owner.name and task.kind != "contrastive"]
            if spec.projects(owner, owner):
                # The projection's last layer is linear: the cosine takes the place of an activation.
                head[owner.name] = mlp(spec.hidden_size or self.config.hidden_size, spec.layers(owner) - 1,
                                       owner.name)
            elif readers and not spec.cosine(owner):  # a cosine has no parameters; nli reads the embeddings
                head[owner.name] = mlp(owner.outputs, spec.layers(owner), owner.name)
        self.head = head
        # Owned here, not by `bert`, so each task's PALs are a top-level key of their own, like its head.
        self.pal = {owner.name: ProjectedAttention(self.config, spec.pal_size, spec.pal_heads, spec.pal_function,
                                                   self.dtype, self.param_dtype, self.execution,
                                                   name=f"pal_{owner.name}")
                    for owner in owners} if spec.pal_size else {}

    def embed_sentences(self, task: str, batch: dict[str, Array], pooling: str, deterministic: bool,
                        perturbation: Array | None = None) -> Array:
        """Pooled `[batch, hidden]` embeddings of the sequences `input_ids` etc., through `task`'s PALs if any.

        `perturbation` `[batch, seq, hidden]` is added to the embedding-layer output (SMART's adversarial input).
        """
        mask = batch["attention_mask"]
        embeddings = self.bert.embed(batch["input_ids"], batch["token_type_ids"], deterministic)
        if perturbation is not None:
            embeddings = embeddings + perturbation.astype(embeddings.dtype)
        adapter = self.pal[self.task(task).owner] if self.pal else None
        out = self.bert.encode(embeddings, mask, deterministic, adapter)
        # PALs sit inside the encoder, so their gradient needs its backward pass; `partly_frozen_optimizer`
        # still keeps the encoder's own weights fixed.
        if self.freeze_encoder and (adapter is None or self.freeze_pals):
            out = jax.lax.stop_gradient(out)
        return pool(out["last_hidden_state"], out["pooler_output"], mask, pooling)

    def __call__(self, task: str, batch: dict[str, Array], deterministic: bool = True,
                 perturbation: Array | None = None, return_embeddings: bool = False):
        """Returns logits `[batch, classes]` (a softmax classifier: sst, cfimdb, tweet), a logit `[batch]`
        (para), a score `[batch]` (sts), or for nli the sentence embeddings `[3 * batch, d]` (premises,
        entailments, contradictions).

        Args:
          task: the name of one of `self.tasks`.
          batch: `input_ids`, `attention_mask`, `token_type_ids` `[batch, seq]`; a bi-encoded pair adds the
            second sentence's arrays with the suffix `_b`, a triplet also the third's with `_c`.
          perturbation: added to the embedding-layer output, shaped `encoder_input_shape(task, batch)`.
          return_embeddings: also return the sentence embeddings the head read, `[batch, hidden]`, or
            `[k * batch, d]` (first sentences, then second ones, ...) for a bi-encoded pair or a triplet:
            `(output, embeddings)`. They are the pooled encoder outputs, projected when `heads.projects`.
        """
        spec, task = self.heads, self.task(task)
        encoding, owner = spec.encoding(task), self.task(task.owner)
        if encoding in ("single", "cross"):
            embeddings = self.embed_sentences(task.name, batch, spec.pooling(task), deterministic, perturbation)
            output = self.head_output(task, self.head[owner.name](
                self.dropout(embeddings, deterministic=deterministic), deterministic))
        else:
            embeddings = self.embed_sentences(task.name, stack_sentences(batch, SENTENCES[encoding]),
                                              spec.pooling(task), deterministic, perturbation)
            if spec.projects(task, owner):
                embeddings = self.head[owner.name](self.dropout(embeddings, deterministic=deterministic),
                                                   deterministic)
            output = embeddings if encoding == "triplet" else self.pair_head(task, *jnp.split(embeddings, 2),
                                                                             deterministic)
        return (output, embeddings) if return_embeddings else output

    def head_output(self, task: Task, outputs: Array) -> Array:
        """A head's output layer `[batch, outputs]` → the task's output: a logit or score `[batch]` when it has one
        output, else its logits `[batch, classes]` (through `heads.classifier_activation`)."""
        if task.outputs == 1:
            return outputs[:, 0]
        if self.heads.classifier_activation == "none":
            return outputs
        return HEAD_ACTIVATIONS[self.heads.classifier_activation](outputs)

    def pair_head(self, task: Task, u: Array, v: Array, deterministic: bool) -> Array:
        """The score, logit `[batch]` or logits `[batch, classes]` of a bi-encoded pair from its two sentences'
        `[batch, d]` embeddings."""
        spec = self.heads
        if spec.cosine(task):
            # A cosine head spans the task's score range: negative similarity (cosine) is clamped to its bottom.
            lo, hi = task.score_range
            if spec.regression_head(task) == "cosine":
                return lo + (hi - lo) * jax.nn.relu(cosine(u, v))
            # Report 002 (scale 20): σ(cos) alone would stay within [0.27, 0.73], a fraction of the range.
            return lo + (hi - lo) * jax.nn.sigmoid(spec.cosine_scale * cosine(u, v))
        if task.kind == "regression":  # cosine_concat
            features = jnp.concatenate([u, v, cosine(u, v)[:, None].astype(u.dtype)], -1)  # [batch, 2d + 1]
        else:  # the Sentence-BERT classifier features
            features = jnp.concatenate([u, v, jnp.abs(u - v), u * v], -1)  # [batch, 4d]
        return self.head_output(task, self.head[task.owner](self.dropout(features, deterministic=deterministic),
                                                            deterministic))
