"""The bridge between the network and the diffusion math: build the U-Net, call it functionally.

Training keeps parameters as a plain pytree (an `nnx.State` of `nnx.Param`s) so that jit, optax,
EMA, sharding and Orbax all see ordinary arrays; `denoise_fn` merges them into the module inside
each traced function. Any network with the call signature
`model(x_t ++ self_cond, gamma, cond, dropout_rng=...)` works with `make_denoise_fn`.
"""

from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import distributed
from bit_diffusion import unet

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(config, diffusion: diffusion_lib.Diffusion, rng: jax.Array) -> unet.UNet:
  """The U-Net of `config.model` for the data of `config.data`.

  Input channels: the noisy analog bits plus the self-conditioning estimate (2 D); output: the
  raw prediction (`Diffusion.output_channels`).
  """
  dtype_name = config.training.compute_dtype
  if dtype_name not in COMPUTE_DTYPES:
    raise ValueError(f'Unknown compute_dtype {dtype_name!r}; choose one of '
                     f'{tuple(COMPUTE_DTYPES)}.')
  bit_channels = config.data.channels * diffusion.codec.channels_per_value
  return unet.UNet(
      in_channels=2 * bit_channels,
      out_channels=diffusion.output_channels(config.data.channels),
      image_size=config.data.image_size,
      base_channels=config.model.base_channels,
      channel_multipliers=tuple(config.model.channel_multipliers),
      num_res_blocks=config.model.num_res_blocks,
      attention_resolutions=tuple(config.model.attention_resolutions),
      num_heads=config.model.num_heads,
      dropout=config.model.dropout,
      num_classes=diffusion.num_classes,
      dtype=COMPUTE_DTYPES[dtype_name],
      rngs=nnx.Rngs(params=rng))


def make_denoise_fn(graphdef: nnx.GraphDef, params: Any, *, microbatch_size: int = 0,
                    num_shards: int = 1) -> diffusion_lib.DenoiseFn:
  """denoise_fn(x_t, gamma, self_cond, labels, dropout_rng) of the network with `params`.

  x_t, self_cond: [B, H, W, D]; gamma: [B]; labels: int32 [B] or None. Returns the raw output
  [B, H, W, output_channels] in float32.

  With microbatch_size > 0 the network runs on microbatches of that many rows in turn
  (`distributed.microbatch_ranges`, over a batch sharded `num_shards` ways) and the outputs are
  joined again: the same result (every example is computed on its own), faster on a CPU, where
  small batches keep the activations in cache (see the README's benchmarks).
  """
  def denoise_fn(x_t: jnp.ndarray, gamma: jnp.ndarray, self_cond: jnp.ndarray,
                 labels: Optional[jnp.ndarray], dropout_rng: Optional[jax.Array]) -> jnp.ndarray:
    model = nnx.merge(graphdef, params, copy=True)
    return model(jnp.concatenate([x_t, self_cond], axis=-1), gamma, labels,
                 dropout_rng=dropout_rng)

  if not microbatch_size:
    return denoise_fn

  def microbatched_fn(x_t, gamma, self_cond, labels, dropout_rng):
    batch = x_t.shape[0]
    ranges = distributed.microbatch_ranges(batch, microbatch_size, num_shards)
    outputs = []
    for index, (start, stop) in enumerate(ranges):
      rows = lambda a: (distributed.microbatch_rows(a, start, stop, num_shards)
                        if jnp.ndim(a) and a.shape[0] == batch else a)  # A scalar gamma stays.
      inputs = jax.tree.map(rows, (x_t, gamma, self_cond, labels))
      key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
      outputs.append(denoise_fn(*inputs, key))
    return distributed.join_microbatch_rows(outputs, num_shards)
  return microbatched_fn
