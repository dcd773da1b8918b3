"""Transformers in the LayerNorm placements of the paper's §5.3 and with ReZero.

A layer applies two sublayers, multi-head self-attention A and the position-wise feed-forward
network F(x) = W₂ φ(W₁ x + b₁) + b₂, each on the residual stream x:

    postnorm   x ← Norm(x + A(x));       x ← Norm(x + F(x))        Vaswani et al. 2017
    prenorm    x ← x + A(Norm(x));       x ← x + F(Norm(x))
    gpt2norm   x ← x + Norm(A(x));       x ← x + Norm(F(x))
    rezero     x ← x + α_i A(x);         x ← x + α_i F(x),   α_i = alpha_init (0 by default)

Norm is LayerNorm. ReZero has no LayerNorm and one α per layer shared by both sublayers, as in
the paper (`alpha_per_sublayer=True` gives each sublayer its own α, `layernorm=True` adds a
LayerNorm in front of each sublayer, x ← x + α_i A(Norm(x)), which keeps J = I at α = 0).

Weights are Xavier-uniform and biases zero, like PyTorch's `nn.TransformerEncoderLayer` after
`xavier_uniform_` on every matrix (the query/key/value projection is one d × 3d matrix, as in
PyTorch's packed `in_proj_weight`). Dropout acts on the attention weights, after φ and on each
sublayer's output; `model.eval()` turns it off.

With `vocab_size` the model reads token ids: x_0 = √d·Embed(tokens) + sinusoidal positions,
and the head maps x_L to logits (after a final LayerNorm for prenorm and gpt2norm);
`causal=True` makes it a decoder language model. Without `vocab_size` it is a bare encoder
stack on continuous inputs of shape (…, seq, d_model), the setting of the paper's Figure 4a.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models._stack import (Identity, Layers, Partitioning, Stack, activation, check_alpha_init,
                           check_variant, remat_policy, uniform_init)

VARIANTS = ("postnorm", "prenorm", "gpt2norm", "rezero")
#: The variants with a trainable α (the only ones `alpha_init` applies to).
ALPHA_VARIANTS = ("rezero",)
XAVIER_UNIFORM = nnx.initializers.xavier_uniform()
#: PyTorch's LayerNorm epsilon (the authors' notebooks use `nn.TransformerEncoderLayer`).
LAYERNORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Every setting of a `Transformer` (the model's keyword arguments, one place).

    Attributes:
      depth: number of layers L (each: self-attention and feed-forward).
      d_model: width d of the residual stream.
      heads: attention heads (must divide d_model).
      ffn: hidden width of the feed-forward network.
      variant: "postnorm", "prenorm", "gpt2norm" or "rezero".
      vocab_size: if set, token-id inputs (embedding, sinusoidal positions, output head of
        vocab_size logits); if None, continuous inputs and outputs of shape (…, seq, d_model).
      causal: causal self-attention mask (a decoder language model).
      dropout: dropout rate (attention weights, feed-forward hidden units, sublayer outputs,
        embeddings); off after `model.eval()`.
      activation: φ of the feed-forward network ("relu" or "gelu"; any of `ACTIVATIONS`).
      alpha_init: initial α of `rezero` layers (0: J = I exactly).
      alpha_per_sublayer: one α per sublayer instead of one per layer (`rezero` only).
      layernorm: `rezero` with a LayerNorm in front of each sublayer (x + α·F(Norm(x)));
        None: LayerNorm for every variant but `rezero`.
      param_dtype: parameter dtype (float64 needs `jax_enable_x64`).
      remat: rematerialize each layer on the backward pass (True, or a name from
        `jax.checkpoint_policies`).
      unroll: layers per scan iteration.

    Example:
      >>> cfg = TransformerConfig(2, 8, heads=2, ffn=16, variant="postnorm")
      >>> cfg.resolved().layernorm, Transformer.from_config(cfg, rngs=nnx.Rngs(0)).config == cfg
      (True, True)
    """

    depth: int
    d_model: int
    heads: int
    ffn: int
    variant: str = "rezero"
    vocab_size: int | None = None
    causal: bool = False
    dropout: float = 0.0
    activation: str = "relu"
    alpha_init: float = 0.0
    alpha_per_sublayer: bool = False
    layernorm: bool | None = None
    param_dtype: Any = jnp.float32
    remat: bool | str = False
    unroll: int = 1

    def __post_init__(self):
        check_variant("Transformer", self.variant, VARIANTS)
        check_alpha_init("Transformer", self.variant, self.alpha_init, ALPHA_VARIANTS)
        if self.depth < 1 or self.d_model < 1 or self.heads < 1 or self.ffn < 1:
            raise ValueError(f"depth, d_model, heads and ffn must be positive, got {self.depth}, "
                             f"{self.d_model}, {self.heads}, {self.ffn}")
        if self.d_model % self.heads:
            raise ValueError(f"heads={self.heads} must divide d_model={self.d_model}; pick "
                             f"d_model a multiple of heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.variant != "rezero" and (self.alpha_per_sublayer or self.layernorm is False):
            raise ValueError(f"alpha_per_sublayer and layernorm=False apply to variant='rezero' "
                             f"only, not {self.variant!r}")
        activation(self.activation)  # an unknown name fails here, not at the first call
        remat_policy(self.remat)

    def resolved(self) -> TransformerConfig:
        """The same model with every default spelled out (`layernorm` by variant)."""
        layernorm = self.variant != "rezero" if self.layernorm is None else self.layernorm
        return dataclasses.replace(self, layernorm=layernorm)


def sinusoidal_positions(length: int, d_model: int, dtype=jnp.float32) -> jax.Array:
    """PE[t, 2i] = sin(t / 10000^{2i/d}), PE[t, 2i+1] = cos(t / 10000^{2i/d}); shape (length, d)."""
    t = jnp.arange(length, dtype=dtype)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=dtype) / d_model)[None, :]
    pe = jnp.zeros((length, d_model), dtype)
    pe = pe.at[:, 0::2].set(jnp.sin(t * freq))
    return pe.at[:, 1::2].set(jnp.cos(t * freq[:, : d_model // 2]))


def attention_mask(length: int, *, causal: bool, padding_mask=None, batch_ndim: int = 0):
    """Boolean mask (…, 1, query, key), True where a query may attend to a key, or None.

    Args:
      length: sequence length T.
      causal: only keys at or before the query's position.
      padding_mask: bool (…, T), True at real tokens and False at padding (keys masked out).
      batch_ndim: number of leading batch axes of the stream (for an explicit rank).
    """
    mask = None
    if causal:
        mask = jnp.tril(jnp.ones((length, length), bool)).reshape((1,) * (batch_ndim + 1)
                                                                  + (length, length))
    if padding_mask is not None:
        keys = jnp.asarray(padding_mask, bool)[..., None, None, :]
        mask = keys if mask is None else mask & keys
    return mask


def xavier_linear(config: TransformerConfig, n_in: int, n_out: int, axes: tuple[str, str], *,
                  part: Partitioning, rngs: nnx.Rngs) -> nnx.Linear:
    """W x + b, W Xavier-uniform and b = 0, on the logical axes `axes` (input, output)."""
    return nnx.Linear(n_in, n_out, kernel_init=part.init(XAVIER_UNIFORM, *axes),
                      bias_init=part.init(nnx.initializers.zeros_init(), axes[1]),
                      param_dtype=config.param_dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention: softmax(Q Kᵀ/√d_head + mask) V per head, then W_o.

    Args:
      config: the model's configuration (d_model, heads, dropout, causal, param_dtype).
      rngs: `nnx.Rngs` for initialization (and dropout).
      partitioning: the model's `Partitioning` (None: unsharded).
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                 partitioning: Partitioning | None = None):
        part = Partitioning.given(partitioning)
        d = config.d_model
        self.heads = config.heads
        self.causal = config.causal
        # tensor parallel: q/k/v columns (the heads) split, the output projection's rows too
        self.qkv = xavier_linear(config, d, 3 * d, ("embed", "heads"), part=part, rngs=rngs)
        self.out = xavier_linear(config, d, d, ("heads", "embed"), part=part, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def weights_and_values(self, x, padding_mask=None):
        """(softmax(Q Kᵀ/√d_head + mask) of shape (…, heads, query, key), V (…, key, heads,
        d_head)): the attention weights before dropout and the values they average."""
        *batch, length, d_model = x.shape
        d_head = d_model // self.heads
        qkv = self.qkv(x).reshape(*batch, length, 3, self.heads, d_head)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(d_head)
        mask = attention_mask(length, causal=self.causal, padding_mask=padding_mask,
                              batch_ndim=len(batch))
        if mask is not None:
            mask = jnp.broadcast_to(mask, logits.shape)
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        return jax.nn.softmax(logits, axis=-1), v

    def attention_weights(self, x, padding_mask=None):
        """softmax(Q Kᵀ/√d_head + mask) before dropout: shape (…, heads, query, key)."""
        return self.weights_and_values(x, padding_mask)[0]

    def __call__(self, x, padding_mask=None):
        weights, v = self.weights_and_values(x, padding_mask)
        y = jnp.einsum("...hqk,...khd->...qhd", self.dropout(weights), v)
        return self.out(y.reshape(x.shape))


class FeedForward(nnx.Module):
    """F(x) = W₂ dropout(φ(W₁ x + b₁)) + b₂, position-wise; arguments as `SelfAttention`'s
    (it reads d_model, ffn, activation, dropout and param_dtype of the config)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                 partitioning: Partitioning | None = None):
        part = Partitioning.given(partitioning)
        d, ffn = config.d_model, config.ffn
        self.phi = activation(config.activation)
        # tensor parallel: W₁'s columns (the hidden units) split, W₂'s rows too
        self.linear1 = xavier_linear(config, d, ffn, ("embed", "mlp"), part=part, rngs=rngs)
        self.linear2 = xavier_linear(config, ffn, d, ("mlp", "embed"), part=part, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, x):
        return self.linear2(self.dropout(self.phi(self.linear1(x))))


class TransformerLayer(nnx.Module):
    """One layer (attention, then feed-forward) x_i ↦ x_{i+1}; see the module docstring.

    Args:
      config: the model's configuration, resolved (`TransformerConfig.resolved`).
      rngs: `nnx.Rngs` for initialization (and dropout).
      partitioning: the model's `Partitioning` (None: unsharded).
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                 partitioning: Partitioning | None = None):
        part = Partitioning.given(partitioning)
        d_model, dtype = config.d_model, config.param_dtype
        self.variant = config.variant
        self.attention = SelfAttention(config, rngs=rngs, partitioning=part)
        self.feed_forward = FeedForward(config, rngs=rngs, partitioning=part)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        if config.layernorm:
            self.norm1 = part.layernorm(d_model, epsilon=LAYERNORM_EPS, param_dtype=dtype,
                                        rngs=rngs)
            self.norm2 = part.layernorm(d_model, epsilon=LAYERNORM_EPS, param_dtype=dtype,
                                        rngs=rngs)
        else:
            self.norm1, self.norm2 = Identity(), Identity()
        if config.variant == "rezero":
            shape = (2,) if config.alpha_per_sublayer else ()
            self.alpha = nnx.Param(jnp.full(shape, config.alpha_init, dtype=dtype))

    def alphas(self):
        """(α of the attention sublayer, α of the feed-forward sublayer)."""
        alpha = self.alpha[...]
        return (alpha, alpha) if alpha.ndim == 0 else (alpha[0], alpha[1])

    def attention_weights(self, x, padding_mask=None):
        """The attention matrices this layer applies to the stream x (before dropout)."""
        h = x if self.variant in ("postnorm", "gpt2norm") else self.norm1(x)
        return self.attention.attention_weights(h, padding_mask)

    def __call__(self, x, padding_mask=None):
        def A(h):
            return self.dropout(self.attention(h, padding_mask))

        def F(h):
            return self.dropout(self.feed_forward(h))

        match self.variant:
            case "postnorm":
                x = self.norm1(x + A(x))
                x = self.norm2(x + F(x))
            case "prenorm":
                x = x + A(self.norm1(x))
                x = x + F(self.norm2(x))
            case "gpt2norm":
                x = x + self.norm1(A(x))
                x = x + self.norm2(F(x))
            case "rezero":
                alpha_attention, alpha_feed_forward = self.alphas()
                x = x + alpha_attention * A(self.norm1(x))
                x = x + alpha_feed_forward * F(self.norm2(x))
        return x


class Transformer(Stack):
    """A Transformer encoder (or causal decoder LM) of `depth` layers.

    Args:
      depth: number of layers L (each: self-attention and feed-forward).
      d_model: width d of the residual stream.
      mesh: a `jax.sharding.Mesh` to create the parameters sharded on (None: unsharded, as
        before). With a "model" axis the model is tensor parallel: the packed q/k/v columns
        and the output projection's rows (the heads), the feed-forward hidden units and the
        vocabulary split over it; everything else is replicated. See
        `models.DEFAULT_SHARDING_RULES`; `nnx.get_partition_spec(nnx.state(model))` lists the
        specs (the stacked layer axis is "layers", replicated by default).
      sharding_rules: overrides of the logical-axis rules ("heads", "mlp", "vocab", "embed",
        "layers" -> a mesh axis or None); needs `mesh`.
      rngs: `nnx.Rngs` for initialization (and dropout).
      **options: the other fields of `TransformerConfig` (heads and ffn, required; variant,
        vocab_size, causal, dropout, activation, alpha_init, alpha_per_sublayer, layernorm,
        param_dtype, remat, unroll), with its defaults. `Transformer.from_config(config,
        rngs=...)` builds from a config; `model.config` is the config it was built from.

    The L layers are one `Layers` stack (parameters stacked on a leading axis, one scan);
    α has shape (L,) (or (L, 2) with `alpha_per_sublayer`). The padding mask reaches every
    layer as a broadcast argument: `model(tokens, padding_mask=mask)`.

    Example:
      >>> enc = Transformer(4, 8, heads=2, ffn=16, variant="postnorm", rngs=nnx.Rngs(0))
      >>> enc(jnp.ones((3, 8))).shape          # continuous input: (seq, d_model)
      (3, 8)
      >>> lm = Transformer(2, 8, heads=2, ffn=16, vocab_size=11, causal=True, rngs=nnx.Rngs(0))
      >>> lm(jnp.zeros((2, 5), jnp.int32)).shape
      (2, 5, 11)

    Paper: ReZero, §4 (Figure 4a, b) and §5.3 (Bachlechner et al. 2020).
    """

    def __init__(self, depth: int, d_model: int, *, mesh=None, sharding_rules=None,
                 rngs: nnx.Rngs, **options):
        config = TransformerConfig(depth, d_model, **options)
        part = Partitioning(mesh, sharding_rules)
        cfg = config.resolved()
        self.config = config
        self.variant, self.depth, self.d_model = cfg.variant, cfg.depth, cfg.d_model
        self.blocks = Layers(lambda r: TransformerLayer(cfg, rngs=r, partitioning=part),
                             cfg.depth, rngs=rngs, remat=cfg.remat, unroll=cfg.unroll,
                             partitioning=part)
        self.vocab_size = vocab_size = cfg.vocab_size
        if vocab_size is not None:
            dtype = cfg.param_dtype
            self.embedding = nnx.Embed(vocab_size, d_model,
                                       embedding_init=part.init(uniform_init(0.1), "vocab",
                                                                "embed"),
                                       param_dtype=dtype, rngs=rngs)
            self.embedding_dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
            self.final_norm = (part.layernorm(d_model, epsilon=LAYERNORM_EPS,
                                              param_dtype=dtype, rngs=rngs)
                               if cfg.variant in ("prenorm", "gpt2norm") else Identity())
            self.output = xavier_linear(cfg, d_model, vocab_size, ("embed", "vocab"), part=part,
                                        rngs=rngs)

    def embed(self, x):
        """x_0: √d·Embed(tokens) + positions for token ids; continuous inputs pass unchanged."""
        if self.vocab_size is None:
            if x.ndim < 2 or x.shape[-1] != self.d_model:
                raise ValueError(f"this Transformer has no embedding (vocab_size=None) and takes "
                                 f"continuous inputs (…, seq, d_model={self.d_model}); got shape "
                                 f"{x.shape}. Pass vocab_size= for token ids")
            return x
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"a Transformer with vocab_size={self.vocab_size} takes integer token "
                            f"ids (…, seq), got dtype {x.dtype}")
        if not isinstance(x, jax.core.Tracer) and x.size and not (
                0 <= int(jnp.min(x)) and int(jnp.max(x)) < self.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1} (vocab_size="
                             f"{self.vocab_size}), got ids {int(jnp.min(x))}..{int(jnp.max(x))}")
        # traced ids out of range embed as NaN (jnp.take fills positions past the end), never
        # as another token (a negative id would otherwise count from the end)
        x = jnp.where(x < 0, self.vocab_size, x)
        h = self.embedding(x) * math.sqrt(self.d_model)
        positions = sinusoidal_positions(x.shape[-1], self.d_model, h.dtype)
        h = h + positions.reshape((1,) * (h.ndim - 2) + positions.shape)
        return self.embedding_dropout(h)

    def head(self, x):
        """Logits over the vocabulary (after a final Norm for prenorm/gpt2norm), or x itself."""
        if self.vocab_size is None:
            return x
        return self.output(self.final_norm(x))

    def stack_stages(self) -> tuple:
        return (self.blocks,)

    def attention_weights(self, x0, padding_mask=None):
        """Every layer's attention matrices on the stream x_0 … x_{L−1} from `states(x0)`.

        Returns shape (L, …, heads, query, key): row-stochastic softmax weights, before dropout
        (`isometry.diagnose` takes the gap between their top two singular values).
        """
        inputs = self.states(x0, padding_mask)[:-1]
        graphdef, state = nnx.split(self.blocks.stacked)

        def one(layer_state, h):
            return nnx.merge(graphdef, layer_state).attention_weights(h, padding_mask)

        return jax.vmap(one)(state, inputs)
