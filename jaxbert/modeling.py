"""BERT encoder in `flax.linen`, laid out so Hugging Face checkpoints map one to one.

Module and parameter names follow the Hugging Face `BertModel` state dict (`embeddings`, `encoder/layer_N`,
`attention/self/query`, ...) so `jaxbert.convert` is a plain table, not a search.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert.choices import ATTENTION_KERNELS, PAL_FUNCTIONS

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's exact erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture hyperparameters, the fields of a Hugging Face BERT `config.json`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config") -> "BertConfig":
        """Builds a config from a Hugging Face config dict; keys BERT does not use are ignored.

        Raises:
          ValueError: the config is not a BERT config, or uses a variant this encoder does not implement.
        """
        model_type = config.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{source}: model_type is {model_type!r}, but jaxbert only implements 'bert'")
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no BERT config at {path}")
        return cls.from_dict(json.loads(path.read_text()), source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` contents for this architecture."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "position_embedding_type": "absolute",
            **dataclasses.asdict(self),
        }

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Execution:
    """How the encoder is computed, never what: every setting gives the same function up to rounding.

    attention: the kernel of dropout-free attention (`jax.nn.dot_product_attention`'s `implementation`): "xla",
      "cudnn" (the fused flash-attention kernel: GPU only, bfloat16 or float16, head dim a multiple of 8 up to
      128), or "auto", which picks cudnn where all of that holds and the mask travels as lengths, xla elsewhere.
      JAX's own default is xla on every backend, so without this the GPU would never run the fused kernel.
    right_padded: every attention mask is a run of ones followed by zeros, as the tokenizer pads. The mask then
      reaches the kernel as per-row key lengths, cuDNN's native padding mode, instead of a boolean
      `[batch, 1, 1, seq]` mask that cuDNN turns into a materialized bias. Any other mask needs False.
    remat: keep only each encoder layer's input from the forward pass and recompute the layer's inner activations
      during the backward pass (`nn.remat`): a few times less activation memory, for about a third more compute.
    """

    attention: str = "auto"
    right_padded: bool = False
    remat: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {self.attention!r} is not one of {', '.join(ATTENTION_KERNELS)}")

    def attention_kernel(self, dtype: Dtype, head_dim: int) -> str:
        """The kernel that runs for queries of `dtype` with `head_dim` features per head."""
        if self.attention != "auto":
            return self.attention
        fused = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                 and head_dim % 8 == 0 and head_dim <= 128 and self.right_padded)
        return "cudnn" if fused else "xla"


def dense_init(config: BertConfig) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=config.initializer_range)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
        """Args: input_ids, token_type_ids `[batch, seq]`. Returns `[batch, seq, hidden]`."""
        cfg = self.config
        embed = lambda num, name: nn.Embed(  # noqa: E731
            num, cfg.hidden_size, embedding_init=dense_init(cfg), dtype=self.dtype, param_dtype=self.param_dtype,
            name=name,
        )
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        x = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with a padding mask.

    With attention-probability dropout inactive the product goes through `jax.nn.dot_product_attention` with
    the kernel `execution` picks (the fused cuDNN one on GPU under "auto"); dropout on the probabilities needs
    them materialized, so training with it takes the explicit path.
    """

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
        """Args: x `[batch, seq, hidden]`; attention_mask `[batch, seq]`, 1 for tokens, 0 for padding.

        Returns: the per-head contexts merged back to `[batch, seq, hidden]` (before the output projection).
        """
        cfg = self.config
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (cfg.num_attention_heads, cfg.head_dim), kernel_init=dense_init(cfg), dtype=self.dtype,
            param_dtype=self.param_dtype, name=name,
        )
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [batch, seq, heads, head_dim]
        mask = attention_mask[:, None, None, :].astype(bool)  # [batch, 1, 1(query), seq(key)]
        dropout = cfg.attention_probs_dropout_prob
        if deterministic or dropout == 0.0:
            kernel = self.execution.attention_kernel(q.dtype, cfg.head_dim)
            if self.execution.right_padded:
                # Only the keys are limited: padded query rows still attend to the real tokens, as with the mask,
                # so every position (padding included) matches the explicit path.
                lengths = attention_mask.sum(-1, dtype=jnp.int32)  # [batch]
                context = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=kernel)
            else:
                context = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=kernel)
        else:
            context = explicit_attention(q, k, v, mask, self.make_rng("dropout"), dropout)
        return context.reshape(*context.shape[:2], cfg.hidden_size)


def explicit_attention(q: Array, k: Array, v: Array, mask: Array, dropout_rng: Array, dropout_rate: float) -> Array:
    """softmax(q kᵀ / √d + mask) v with dropout on the probabilities; softmax in float32.

    Args: q, k, v `[batch, seq, heads, head_dim]`; mask broadcastable to `[batch, heads, seq, seq]`.
    Returns: `[batch, seq, heads, head_dim]` in q's dtype.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(q.shape[-1])
    # The most negative finite float, as Hugging Face uses: -inf would turn fully masked rows into NaN.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(q.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class BertResidual(nn.Module):
    """Dense → dropout → LayerNorm(x + residual): the post-LN output block used twice per layer."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = nn.Dense(
            cfg.hidden_size, kernel_init=dense_init(cfg), dtype=self.dtype, param_dtype=self.param_dtype, name="dense"
        )(x)
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm")(
            x + residual
        )


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        context = BertSelfAttention(**kw, execution=self.execution, name="self")(x, attention_mask, deterministic)
        return BertResidual(**kw, name="output")(context, x, deterministic)


class BertLayer(nn.Module):
    """One post-LN Transformer layer: attention block, then the GELU feed-forward block."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool, parallel: Array | None = None) -> Array:
        """Args: x `[batch, seq, hidden]`, attention_mask `[batch, seq]`; `parallel` `[batch, seq, hidden]`, a
        branch computed from x and summed into the layer's last LayerNorm (a PAL's TS(x)).

        Returns `[batch, seq, hidden]`.
        """
        cfg = self.config
        kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        attended = BertAttention(**kw, execution=self.execution, name="attention")(x, attention_mask, deterministic)
        hidden = nn.Dense(
            cfg.intermediate_size, kernel_init=dense_init(cfg), dtype=self.dtype, param_dtype=self.param_dtype,
            name="intermediate",
        )(attended)
        hidden = ACTIVATIONS[cfg.hidden_act](hidden)
        residual = attended if parallel is None else attended + parallel
        return BertResidual(**kw, name="output")(hidden, residual, deterministic)


# `adapter(layer_index, h, attention_mask, deterministic)` → `[batch, seq, hidden]`, added in parallel to a layer.
Adapter = Callable[[int, Array, Array, bool], Array]


class ProjectedAttention(nn.Module):
    """One task's projected attention layers (PALs; Stickland & Murray 2019), an `Adapter` for `BertModel.encode`.

    TS(h) = V^D MH_l(V^E h) runs in parallel with layer l: h_{l+1} = LN(h_l + SA(h_l) + TS(h_l)), where the
    paper's SA(h) = FFN(LN(h + MH(h))) is the whole layer; so TS of the layer's input joins the feed-forward
    block's LayerNorm, as in the authors' released code. V^E `[hidden, size]` and V^D `[size, hidden]` are shared
    by all layers of the task (the paper's parameter saving); each layer has its own `heads`-head attention in the
    `size`-wide space, with no output projection since V^D follows it. TS is the paper's equation as written: the
    released code also puts a GELU after V^D. `function` "identity" drops the attention, TS(h) = V^D V^E h: the
    paper's low-rank layer with g the identity (report 004's PALs).
    """

    config: BertConfig
    size: int = 204
    heads: int = 12
    function: str = "attention"  # attention | identity: the g of TS(h) = V^D g(V^E h)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        cfg = self.config
        dense = lambda n, init: nn.Dense(  # noqa: E731
            n, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = dense(self.size, dense_init(cfg))  # V^E
        # V^D starts at zero: the branch adds nothing at step 0, so training starts from the pretrained encoder's
        # function, and V^D's gradient (through MH(V^E h) ≠ 0) is not zero, so the branch still learns.
        self.decoder = dense(cfg.hidden_size, nn.initializers.zeros)
        if self.function not in PAL_FUNCTIONS:
            raise ValueError(f"PAL function {self.function!r} is not one of {', '.join(PAL_FUNCTIONS)}")
        small = dataclasses.replace(cfg, hidden_size=self.size, num_attention_heads=self.heads)
        self.attention = [BertSelfAttention(small, self.dtype, self.param_dtype, self.execution)
                          for _ in range(cfg.num_hidden_layers)] if self.function == "attention" else []

    def __call__(self, layer: int, h: Array, attention_mask: Array, deterministic: bool) -> Array:
        """TS(h) `[batch, seq, hidden]` of layer `layer` for its input h `[batch, seq, hidden]`."""
        projected = self.encoder(h)
        if self.attention:
            projected = self.attention[layer](projected, attention_mask, deterministic)
        return self.decoder(projected)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool, adapter: Adapter | None = None) -> Array:
        # `deterministic` (argument 3, counting the module) picks Python branches, so remat must not trace it.
        layer = nn.remat(BertLayer, static_argnums=(3,)) if self.execution.remat else BertLayer
        for i in range(self.config.num_hidden_layers):
            parallel = None if adapter is None else adapter(i, x, attention_mask, deterministic)
            x = layer(self.config, self.dtype, self.param_dtype, self.execution, name=f"layer_{i}")(
                x, attention_mask, deterministic, parallel)
        return x


class BertModel(nn.Module):
    """The BERT encoder and pooler.

    `embed` and `encode` are exposed separately so a regularizer (SMART) can perturb the embedding output
    and run the rest of the network on it.
    """

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = BertEmbeddings(**kw)
        self.encoder = BertEncoder(**kw, execution=self.execution)
        self.pooler = nn.Dense(
            self.config.hidden_size, kernel_init=dense_init(self.config), dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def embed(self, input_ids: Array, token_type_ids: Array | None = None, deterministic: bool = True) -> Array:
        """`[batch, seq]` token ids → `[batch, seq, hidden]` embedding-layer output."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self.embeddings(input_ids, token_type_ids, deterministic)

    def encode(self, embeddings: Array, attention_mask: Array, deterministic: bool = True,
               adapter: Adapter | None = None) -> dict[str, Array]:
        """Runs the Transformer stack and pooler on embedding-layer output `[batch, seq, hidden]`.

        `adapter` adds a branch in parallel to every layer (e.g. a task's `ProjectedAttention`); it is a module
        bound to the caller, so its parameters stay under the caller's keys, outside this model's.
        """
        hidden = self.encoder(embeddings, attention_mask, deterministic, adapter)
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))
        return {"last_hidden_state": hidden, "pooler_output": pooled}

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> dict[str, Array]:
        """Args:
          input_ids: `[batch, seq]` WordPiece ids.
          attention_mask: `[batch, seq]`, 1 for real tokens, 0 for padding.
          token_type_ids: `[batch, seq]` segment ids; zeros when omitted.
          deterministic: disables dropout; when False a `dropout` PRNG stream is required.

        Returns: `last_hidden_state` `[batch, seq, hidden]` and `pooler_output` `[batch, hidden]`.
        """
        return self.encode(self.embed(input_ids, token_type_ids, deterministic), attention_mask, deterministic)
