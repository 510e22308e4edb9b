"""Building blocks shared by the video tower, the text tower and the sort head.

Parameters carry logical axis names ('embed', 'mlp', 'heads', 'kv', 'vocab', 'layers');
`tvts.sharding` maps them to mesh axes with rules from the config. Parameters are float32;
matmuls run in the module's compute `dtype`; LayerNorm and softmax always run in float32.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

default_kernel_init = nn.initializers.xavier_uniform()
embed_init = nn.initializers.normal(stddev=0.02)


def logical(init: Callable, axes: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, axes)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    # OpenCLIP and PyTorch's nn.GELU use the exact erf form.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 whatever the compute dtype; returns the compute dtype.

    The variance is computed in two passes, mean((x - mean(x))^2), as PyTorch's LayerNorm does: the one-pass
    E[x^2] - E[x]^2 loses every digit of a small spread on a large mean in float32.
    """

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=self.epsilon, dtype=jnp.float32, param_dtype=jnp.float32, use_fast_variance=False,
                         scale_init=logical(nn.initializers.ones, ("embed",)),
                         bias_init=logical(nn.initializers.zeros, ("embed",)), name="norm")(
                             x.astype(jnp.float32))
        return y.astype(self.dtype)


def shard_activation(x: jax.Array, last: str) -> jax.Array:
    """[batch, ..., `last`] (or [batch, ..., heads, kv] for last='heads') laid out by the config's rules: with a
    `tensor` mesh axis > 1 the mlp units and the heads are split over it, as the kernels that make them are, so
    tensor parallelism divides these activations' memory instead of gathering them whole on every device."""
    axes = ("heads", "kv") if last == "heads" else (last,)
    return nn.with_logical_constraint(x, ("batch",) + ("length",) * (x.ndim - 1 - len(axes)) + axes)


def product_input(x: jax.Array) -> jax.Array:
    """[batch, ..., embed] entering a product whose outputs are split by heads or mlp units: every token, so that with
    sequence parallelism GSPMD gathers these (LayerNorm) activations over `tensor` here, and the kernels stay split.
    Left to itself it gathered the qkv kernels over `tensor` instead and moved q, k, v with all-to-alls."""
    return shard_activation(x, "embed")


def shard_residual(x: jax.Array) -> jax.Array:
    """The residual stream [batch, tokens, embed] laid out by the config's rules. Its token axis is 'sequence', not
    'length': with sequence parallelism the rules split it over `tensor`, while the attention and MLP products, whose
    activations are split by heads or units, keep 'length' whole (and the divided attention regroups all its tokens).
    The blocks constrain their LayerNorm and product outputs too, which pins where GSPMD gathers the tokens (after the
    LayerNorm, before the product) and where it reduces a product's partial sums over `tensor` back to each device's
    share of the tokens (right after the product)."""
    return nn.with_logical_constraint(x, ("batch", "sequence", "embed"))


class Mlp(nn.Module):
    hidden: int
    act: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = product_input(x)
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=logical(default_kernel_init, ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros, ("mlp",)), name="fc")(x)
        x = shard_activation(ACTIVATIONS[self.act](x), "mlp")
        return nn.Dense(width, dtype=self.dtype, kernel_init=logical(default_kernel_init, ("mlp", "embed")),
                        bias_init=logical(nn.initializers.zeros, ("embed",)), name="proj")(x)


# How `attend` computes (a model's `attention` field, config.model.attention; docs/benchmarks.md, "Attention layout"):
#   'einsum'             einsum over the operands as they come, token-major [..., L, H, Dh];
#   'einsum_heads_major' the same after copying q, k, v to heads-major [..., H, L, Dh] (faster on XLA:CPU for the
#                        divided space-time attention, in training and forward-only programs);
#   'dot_product'        jax.nn.dot_product_attention with its implementation left to JAX (JAX 0.10 still runs its
#                        XLA version on every platform then; cuDNN's fused kernel only runs when asked for by name).
ATTENTION_IMPLEMENTATIONS = ("einsum", "einsum_heads_major", "dot_product")
# 'auto': each model's measured default: 'einsum', but 'einsum_heads_major' in TVTSv2's video tower.
ATTENTION_CHOICES = ("auto", *ATTENTION_IMPLEMENTATIONS)


def attention_implementation(choice: str, auto: str = "einsum") -> str:
    """The implementation `attend` runs for a model's `attention` field: an explicit one as it is, 'auto' as `auto`."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {choice!r}; known: {', '.join(ATTENTION_CHOICES)}")
    return auto if choice == "auto" else choice


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, implementation: str = "einsum"
           ) -> jax.Array:
    """Softmax attention over the second-to-last token axis.

    q: [..., Lq, H, Dh], k/v: [..., Lk, H, Dh], mask broadcastable to [..., H, Lq, Lk] (True = keep).
    Returns [..., Lq, H, Dh]. Logits and softmax in float32, the weights then cast to v's dtype for the product.

    implementation: one of ATTENTION_IMPLEMENTATIONS.
    'einsum_heads_major': for operands with the heads axis between tokens and channels XLA:CPU emits a slow batched
    dot; at B/16 shapes the heads-major copies made the unmasked video tower's forward 1.2x faster and the train
    step 1.03-1.07x faster (docs/benchmarks.md).
    'dot_product': the same softmax(q k^T / sqrt(Dh)) v, with two differences of rounding only. The scale multiplies
    the float32 logits instead of q in the compute dtype (in bfloat16 that rounds q once less), and masked logits
    take -0.7 * float32 max instead of float32 min (both give masked keys a weight of exactly 0; a row with every
    key masked, which no tower here builds, gets uniform weights either way).
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; "
                         f"known: {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    if implementation == "dot_product":
        return _dot_product_attention(q, k, v, mask)
    heads_major = implementation == "einsum_heads_major"
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    if heads_major:
        q, k, v = (jnp.swapaxes(a, -2, -3) for a in (q, k, v))
        logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if heads_major:
        return jnp.swapaxes(jnp.einsum("...qk,...kd->...qd", weights, v), -2, -3)
    return jnp.einsum("...hqk,...khd->...qhd", weights, v)


def _dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`attend` through jax.nn.dot_product_attention, which takes [B, L, H, Dh] operands and a [B, H, Lq, Lk] mask:
    the leading axes (the divided attention's groups) fold into B and unfold again."""
    batch_shape = q.shape[:-3]
    fold = lambda a: a.reshape((-1, *a.shape[-3:]))
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (len(batch_shape) + 3 - mask.ndim) + mask.shape)
        if any(n != 1 for n in mask.shape[:-3]):  # a mask shared by the whole batch stays [1, ...], unbroadcast
            mask = jnp.broadcast_to(mask, batch_shape + mask.shape[-3:])
        mask = fold(mask)
    out = jax.nn.dot_product_attention(fold(q), fold(k), fold(v), mask=mask)
    return out.reshape(q.shape)


class Projection(nn.Module):
    """y = einsum(spec, x, kernel) + bias with a multi-axis kernel and logical axis names on both."""

    spec: str  # e.g. "...d,dthk->...thk"
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    in_dims: int = 1  # leading kernel dims contracted with x (fan-in)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = tuple(range(self.in_dims))
        fan_out = tuple(range(self.in_dims, len(self.kernel_shape)))
        init = nn.initializers.xavier_uniform(in_axis=fan_in, out_axis=fan_out)
        kernel = self.param("kernel", logical(init, self.kernel_axes), self.kernel_shape)
        bias = self.param("bias", logical(nn.initializers.zeros, self.kernel_axes[self.in_dims:]),
                          self.kernel_shape[self.in_dims:])
        return jnp.einsum(self.spec, x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def qkv_projection(x: jax.Array, heads: int, dtype: Dtype, name: str = "qkv") -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fused query/key/value projection (call inside a compact method): x [..., D] -> q, k, v [..., H, D/H].

    Kernel [D, 3, H, Dh], bias [3, H, Dh].
    """
    width = x.shape[-1]
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    qkv = Projection("...d,dthk->...thk", (width, 3, heads, width // heads), ("embed", None, "heads", "kv"),
                     dtype=dtype, name=name)(product_input(x))
    return tuple(shard_activation(qkv[..., i, :, :], "heads") for i in range(3))


def out_projection(x: jax.Array, dtype: Dtype, name: str = "out") -> jax.Array:
    """Heads back to width (call inside a compact method): [..., H, Dh] -> [..., D]; kernel [H, Dh, D]."""
    heads, head_dim = x.shape[-2:]
    # split by heads as q, k, v are: with sequence parallelism the output's gradient arrives split by tokens, and
    # unconstrained GSPMD ran the attention's backward split by query tokens, with all-to-alls in and out of it
    x = shard_activation(x, "heads")
    return Projection("...hk,hkd->...d", (heads, head_dim, heads * head_dim), ("heads", "kv", "embed"),
                      in_dims=2, dtype=dtype, name=name)(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention; params `qkv` [D, 3, H, Dh] and `out` [H, Dh, D]."""

    heads: int
    dtype: Dtype = jnp.float32
    attention: str = "einsum"  # the implementation (see `attend`)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        q, k, v = qkv_projection(x, self.heads, self.dtype)
        return out_projection(attend(q, k, v, mask, self.attention), self.dtype)


class ResidualBlock(nn.Module):
    """Pre-LN transformer block (CLIP text tower, sort head). Scan-compatible: (x, mask) -> (x, None)."""

    heads: int
    mlp_dim: int
    act: str
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    attention: str = "einsum"  # the implementation (see `attend`)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, None]:
        x = shard_residual(x)
        h = shard_residual(LayerNorm(self.epsilon, self.dtype, name="ln_1")(x))
        x = x + shard_residual(SelfAttention(self.heads, self.dtype, self.attention, name="attn")(h, mask))
        h = shard_residual(LayerNorm(self.epsilon, self.dtype, name="ln_2")(x))
        return x + shard_residual(Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(h)), None


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_stack(block: type[nn.Module], depth: int, remat: str, num_broadcast: int = 1, unroll: bool = False
                ) -> type[nn.Module]:
    """`block` scanned `depth` times with stacked parameters (leading 'layers' axis), optionally rematerialised.

    unroll (config.model.unroll_layers): the scan's body repeated `depth` times in straight-line code instead of a
    loop, with the same stacked parameters. The loop stores every block's saved activations into stacked buffers and
    slices them out again in the backward pass; on XLA:CPU that copying took a fifth of the tiny demo's step
    (docs/benchmarks.md, "Where the tiny step's time goes"). At B/16 the unrolled step was slower (1.23-1.34x), and
    unrolled programs take longer to compile, more so for deep towers.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; known: {sorted(REMAT_POLICIES)}")
    if remat != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(nn.broadcast,) * num_broadcast, length=depth, unroll=depth if unroll else 1,
                   metadata_params={nn.PARTITION_NAME: "layers"})
