"""The Bit Diffusion method: integers as analog bits, Gaussian diffusion on them, and back.

Chen, Zhang & Hinton, "Analog Bits" (ICLR 2023). A method supplies what the engine and the
generation loop need and knows no data: its network's shape (built by the task), its loss with
its own metric names, its sampler, and its checkpoint signature. The math lives in
`diffusion.py` (corruption, Algorithm 1, x0 estimates), `samplers.py` (Algorithm 2) and
`analog_bits.py` (the codes).

The denoiser protocol that a task's network follows:
  network(x_in, gamma, cond, dropout_rng=None) -> raw output, for training;
  network.encode_condition(cond) -> context, once per sampled batch, and
  network.denoise(x_in, gamma, context) -> raw output, at every sampling step,
with x_in the noisy bits and the self-conditioning estimate concatenated [B, ..., 2 D].
"""

from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import distributed
from bit_diffusion import samplers


class BitDiffusion:
  """Bit Diffusion on the data of `task`.

  Attributes:
    task: the task (data shapes, network, outputs).
    diffusion: the Diffusion (codec, schedule, prediction, loss, self-conditioning).
    metric_names: the per-example training metrics of `loss`.
  """
  metric_names = ('loss', 'x0_mse', 'bit_error')

  def __init__(self, config, task):
    missing = [name for name in ('bits', 'diffusion') if name not in config]
    if missing:
      raise ValueError(f'config.method={config.method!r} needs the config sections '
                       f'{missing} (how values become analog bits and the diffusion), which '
                       f'this config lacks (a config of another method): start from a Bit '
                       f'Diffusion config of the {config.task} task, e.g. configs/digits.py or '
                       'configs/text.py.')
    self.config = config
    self.task = task
    wanted_bits = config.data.get('num_bits', 0)
    if wanted_bits and wanted_bits != task.num_bits:
      raise ValueError(f'data.num_bits={wanted_bits} does not fit the data: it needs '
                       f'{task.num_bits} bits per value (a tokenizer: ceil(log2(vocab))). Set '
                       '--config.data.num_bits=0 to derive it.')
    self.diffusion = diffusion_lib.diffusion_from_config(config, task.num_bits, task.num_classes)
    self.self_condition = config.sampling.self_condition
    if self.self_condition and not self.diffusion.self_condition_rate:
      logging.warning('sampling.self_condition=True, but the model is trained with '
                      'diffusion.self_condition_rate=0 and never saw an estimate: sampling '
                      'without self-conditioning.')
      self.self_condition = False

  def check(self, num_devices: int) -> None:
    """Errors of the method's config fields that need no data and no compile."""
    config, diffusion = self.config, self.diffusion
    self._check_guidance(config.sampling.get('guidance', 0.0))
    self._check_autoguidance(self.autoguidance({}), config.sampling.get('guidance', 0.0))
    self.guidance_interval({})
    if diffusion.label_dropout and not self.task.num_classes:
      raise ValueError('diffusion.label_dropout > 0 needs data.class_conditional=True.')
    if diffusion.position_noise_rate and len(self.task.example_shape) != 1:
      raise ValueError(
          f'diffusion.position_noise_rate={diffusion.position_noise_rate} gives every sequence '
          f'position its own noise level; the {config.task} task has examples of shape '
          f'{tuple(self.task.example_shape)}, not sequences: set it to 0.')
    self._check_infill_method(config.sampling.get('infill_method', 'replace'))
    sampler_microbatch = config.cpu.sampler_microbatch_size
    if sampler_microbatch < 0 or sampler_microbatch % num_devices:
      raise ValueError(f'cpu.sampler_microbatch_size={sampler_microbatch} must be 0 (whole '
                       f'batches) or a positive multiple of the {num_devices} devices.')
    batch, microbatch = config.training.batch_size, config.training.microbatch_size
    rate = diffusion.self_condition_rate
    k, m = diffusion_lib.self_condition_pattern(rate, batch)
    if microbatch and microbatch < batch and k and (
        diffusion_lib.self_condition_pattern(rate, microbatch) != (k, m)
        or (microbatch // num_devices) % m):
      raise ValueError(
          f'training.microbatch_size={microbatch} cannot keep the self-conditioning share '
          f'{k}/{m} of diffusion.self_condition_rate={rate} on each of {num_devices} devices: '
          f'use a microbatch of a multiple of {m * num_devices} examples.')

  def infill_methods(self) -> tuple[str, ...]:
    """The infilling methods this model supports: 'clean' needs training with position noise."""
    return ('replace', 'clean') if self.diffusion.position_noise_rate else ('replace',)

  def _check_guidance(self, guidance: float) -> None:
    """Errors of classifier-free guidance w: at training's config check and at every sampler."""
    if guidance and not self.task.num_classes:
      raise ValueError('Classifier-free guidance needs a class-conditional model '
                       '(data.class_conditional=True, trained with diffusion.label_dropout > 0).')
    if guidance and not self.diffusion.label_dropout:
      raise ValueError(f'Guidance {guidance} needs a model trained with diffusion.label_dropout > '
                       '0: without it the model never learns the unconditional prediction that '
                       'guidance subtracts. Sample with sampling.guidance=0, or train with e.g. '
                       '--config.diffusion.label_dropout=0.1.')

  def autoguidance(self, overrides: dict[str, Any]) -> float:
    """The autoguidance weight of a sampler with these overrides (default: the config's)."""
    return overrides.get('autoguidance', self.config.sampling.get('autoguidance', 0.0))

  def guidance_interval(self, overrides: dict[str, Any]) -> tuple[float, float]:
    """sampling.guidance_interval (or the override): the noise levels gamma in [lo, hi] at which
    guidance and autoguidance apply (`samplers.guided_in_interval`); checked."""
    interval = overrides.get('guidance_interval',
                             self.config.sampling.get('guidance_interval', samplers.EVERYWHERE))
    if (not isinstance(interval, (tuple, list)) or len(interval) != 2
        or not all(isinstance(v, (int, float)) for v in interval)
        or not 0 <= interval[0] < interval[1] <= 1):
      raise ValueError(f'sampling.guidance_interval={interval!r} must be (lo, hi) with '
                       '0 <= lo < hi <= 1: the noise levels gamma (1 clean, 0 noise) at which '
                       'guidance applies; (0, 1): everywhere.')
    return float(interval[0]), float(interval[1])

  def guide_fraction(self) -> float:
    """sampling.guide_fraction: where in training autoguidance's guide lies (0: no guide)."""
    return self.config.sampling.get('guide_fraction', 0.0)

  def guide_step(self) -> int:
    """The step of autoguidance's guide: sampling.guide_fraction of training.num_steps."""
    return int(round(self.guide_fraction() * self.config.training.num_steps))

  def _check_autoguidance(self, weight: float, guidance: float) -> None:
    """Errors of autoguidance w: at training's config check and at every sampler."""
    if weight < 0:
      raise ValueError(f'sampling.autoguidance={weight} must be >= 0 (0: off).')
    if weight and guidance:
      raise ValueError(f'sampling.autoguidance={weight} and sampling.guidance={guidance}: use '
                       'one kind of guidance at a time; set the other to 0.')
    num_steps, fraction = self.config.training.num_steps, self.guide_fraction()
    if (weight or fraction) and not 1 <= self.guide_step() < num_steps:
      raise ValueError(
          f'sampling.guide_fraction={fraction} (with sampling.autoguidance={weight}): the guide '
          f'is the checkpoint at that fraction of training.num_steps={num_steps}, step '
          f'{self.guide_step()}, which must lie in [1, {num_steps}); use a fraction in (0, 1), '
          'e.g. 0.375 (autoguidance > 0 needs one).')

  def _check_infill_method(self, name: str) -> None:
    if name not in samplers.INFILL_METHODS:
      raise ValueError(f'Unknown sampling.infill_method={name!r}; choose one of '
                       f'{samplers.INFILL_METHODS}.')
    if name not in self.infill_methods():
      raise ValueError(f"sampling.infill_method='{name}' gives the known positions clean next to "
                       'noisy ones, which this model never saw: it needs training with '
                       "diffusion.position_noise_rate > 0. Use 'replace'.")

  def signature(self) -> dict[str, Any]:
    """What a checkpoint's parameters depend on, beyond the task's fields."""
    bits = self.config.bits
    return {'method': 'bit_diffusion', 'data.num_bits': self.task.num_bits,
            'bits.encoding': bits.encoding, 'bits.scale': bits.scale,
            'bits.permutation_seed': bits.permutation_seed,
            'diffusion.prediction': self.diffusion.prediction,
            'diffusion.loss': self.diffusion.loss, 'diffusion.output': self.diffusion.output}

  # The network and the data as bits.

  @property
  def values_per_position(self) -> int:
    """Integers per position: C of [H, W, C] images, 1 of [L] sequences."""
    return self.task.example_shape[-1] if self.task.channels_last else 1

  @property
  def bit_channels(self) -> int:
    """D: analog channels per position ([H, W, C] images: C * bits; [L] sequences: bits)."""
    return self.values_per_position * self.diffusion.codec.channels_per_value

  def create_network(self, rng: jax.Array) -> nnx.Module:
    """The task's denoiser: input the noisy bits and the self-conditioning estimate (2 D
    channels), output the raw prediction (`Diffusion.output_channels`)."""
    return self.task.create_network(
        'denoiser', in_channels=2 * self.bit_channels,
        out_channels=self.diffusion.output_channels(self.values_per_position),
        out_kernel_size=1 if self.diffusion.output == 'softmax' else 3, rng=rng)

  def encode(self, data: jax.Array) -> jax.Array:
    """Integers [B, *example_shape] -> analog bits float32 [B, ..., D]."""
    return self.diffusion.codec.encode(data if self.task.channels_last else data[..., None])

  def decode(self, bits: jax.Array) -> jax.Array:
    """Analog bits [B, ..., D] -> integers int32 [B, *example_shape] (signs of the bits)."""
    data = self.diffusion.codec.decode(bits)
    return data if self.task.channels_last else data[..., 0]

  # Training.

  def loss(self, graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array],
           rng: jax.Array, batch_sharding: Optional[NamedSharding] = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean loss, per-example metrics {'loss', 'x0_mse', 'bit_error'} each [B]): Algorithm 1."""
    data, cond = self.task.split_batch(batch)
    bits = self.encode(data)
    if batch_sharding is not None:
      bits = jax.lax.with_sharding_constraint(bits, batch_sharding)
    terms = self.diffusion.loss_terms(make_denoise_fn(graphdef, params), bits, cond, rng)
    return jnp.mean(terms.loss), {'loss': terms.loss, 'x0_mse': terms.x0_mse,
                                  'bit_error': terms.bit_error}

  # Sampling.

  def make_sample_fn(self, graphdef: nnx.GraphDef, mesh: Optional[Mesh] = None, *,
                     infill: bool = False, **overrides) -> Callable[..., jax.Array]:
    """A jitted fn(params, rng, cond) -> integer samples int32 [B, *example_shape].

    cond has a leading batch axis B (labels, caption images; zeros for an unconditional model,
    which only carry B). Keyword overrides of `config.sampling`: sampler, steps, td,
    ddpm_variance, guidance, autoguidance, guidance_interval, self_condition, infill_method; and
    trajectory=True, which returns the sampler's path instead, float32 [B, steps + 1, ..., D]
    (`samplers.sample`'s keep_path). With autoguidance w > 0, params is a pair (the model's
    weights, the guide's: `generation.load` reads both).
    The condition is encoded once per batch; with cpu.sampler_microbatch_size > 0 each network
    evaluation runs on microbatches in turn (the same samples). With a mesh, the batch is
    sharded over its 'data' axis.

    infill=True: cond is (cond, known int [B, *example_shape], known_mask bool [B,
    *example_shape]) and the values where known_mask is True are kept, the others filled in
    by `samplers.sample`'s method `infill_method`: 'replace' (the known bits re-noised to every
    step's level) or 'clean' (sequences from a model trained with position noise: the known
    positions given clean, at their own noise level).
    """
    settings = self.sampler_settings(overrides)
    guidance = settings.pop('guidance', self.config.sampling.get('guidance', 0.0))
    infill_method = settings.pop('infill_method',
                                 self.config.sampling.get('infill_method', 'replace'))
    trajectory = settings.pop('trajectory', False)
    self._check_infill_method(infill_method)
    autoguidance = self.autoguidance(settings)
    settings.pop('autoguidance', None)
    interval = self.guidance_interval(settings)
    settings.pop('guidance_interval', None)
    self._check_guidance(guidance)
    self._check_autoguidance(autoguidance, guidance)
    num_shards = 1 if mesh is None else mesh.shape['data']

    def sample_fn(params, rng, cond):
      params, guide_params = params if autoguidance else (params, None)
      known = None
      if infill:
        cond, known_data, known_mask = cond
        mask = known_mask if self.task.channels_last else known_mask[..., None]
        known = (self.encode(known_data),
                 jnp.repeat(mask, self.diffusion.codec.channels_per_value, axis=-1))
      model = nnx.merge(graphdef, params, copy=True)
      batch = jax.tree.leaves(cond)[0].shape[0]
      # An unconditional model's cond only carries the batch size.
      context = model.encode_condition(cond) if self.uses_condition() else None
      guide = None
      if autoguidance:  # The guide reads the condition through its own encoder (a ViT's).
        guide_network = nnx.merge(graphdef, guide_params, copy=True)
        guide = (guide_network,
                 guide_network.encode_condition(cond) if self.uses_condition() else None)
      # The U-Net's context is its labels: the null label is num_classes.
      result = self.sample_bits(model, rng, batch, context, self.task.num_classes, guidance,
                                settings, num_shards, guide=guide, autoguidance=autoguidance,
                                guidance_interval=interval, known=known, infill=infill_method,
                                keep_path=trajectory)
      return path_batch_first(result[2]) if trajectory else self.decode(result[0])

    return distributed.jit_sampler(sample_fn, self.config.cpu, mesh)

  def sampler_settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
    """`config.sampling`'s sampler, steps, td, ddpm_variance and self_condition, updated by
    `overrides` (which may add other keys, left to the caller)."""
    s = self.config.sampling
    settings = dict(sampler=s.sampler, steps=s.steps, td=s.td, ddpm_variance=s.ddpm_variance,
                    self_condition=self.self_condition)
    settings.update(overrides)
    return settings

  def sample_bits(self, denoiser: nnx.Module, rng: jax.Array, batch: int, context: Any,
                  null_context: Any, guidance: float, settings: dict[str, Any],
                  num_shards: int = 1, guide: Optional[tuple[nnx.Module, Any]] = None,
                  autoguidance: float = 0.0,
                  guidance_interval: tuple[float, float] = samplers.EVERYWHERE,
                  **sample_kwargs) -> tuple[jax.Array, ...]:
    """`samplers.sample` with a denoiser network (`denoise(x_in, gamma, context)`): analog bits
    [batch, ..., D] (x0, x and, with keep_path, the path).

    Guidance combines the unclipped estimates of `context` and `null_context` (the null label,
    or an encoded unconditional condition; `samplers.guided_x0_fn`), then clips once: as the
    authors' code, which turns softmax/sigmoid outputs into expected bits first (for x0, eps
    and v predictions this equals combining the raw outputs). With
    cpu.sampler_microbatch_size > 0 each network evaluation runs on microbatches in turn.
    With a `guide` (its network, the condition as it encodes it) and autoguidance w > 0, the
    estimates of the denoiser and its guide are combined instead (`samplers.autoguided_x0_fn`).
    Either guidance applies only at the noise levels of `guidance_interval`.
    """
    diffusion, microbatch = self.diffusion, self.config.cpu.sampler_microbatch_size

    def estimate_of(network):
      def x0_estimate(x, gamma, self_cond, context):  # Not clipped yet.
        inputs = (jnp.concatenate([x, self_cond], axis=-1), gamma, context)
        output = run_in_microbatches(lambda x_in, g, c: network.denoise(x_in, g, c), inputs,
                                     microbatch, num_shards)
        return diffusion.x0_from_output(output, x, gamma)
      return x0_estimate

    clip = lambda x0, x, gamma: jnp.clip(x0, -diffusion.scale, diffusion.scale)
    if guide is not None and autoguidance:
      (guide_network, guide_context), model_estimate = guide, estimate_of(denoiser)
      guide_estimate = estimate_of(guide_network)
      x0_fn = samplers.autoguided_x0_fn(
          lambda x, gamma, self_cond: model_estimate(x, gamma, self_cond, context),
          lambda x, gamma, self_cond: guide_estimate(x, gamma, self_cond, guide_context),
          clip, autoguidance, guidance_interval)
    else:
      x0_fn = samplers.guided_x0_fn(estimate_of(denoiser), clip, context, null_context,
                                    guidance, guidance_interval)
    shape = (batch,) + self._bits_shape()
    return samplers.sample(x0_fn, shape, rng, gamma_fn=diffusion.gamma_fn, **settings,
                           **sample_kwargs)

  def uses_condition(self) -> bool:
    """Whether the network reads a condition: class labels, or a task whose condition is not a
    label (captioning's images)."""
    return bool(self.task.num_classes) or not self.task.channels_last

  def _bits_shape(self) -> tuple[int, ...]:
    """[..., D]: the shape of one example's analog bits."""
    shape = self.task.example_shape
    return (shape[:-1] if self.task.channels_last else shape) + (self.bit_channels,)


def make_denoise_fn(graphdef: nnx.GraphDef, params: Any) -> diffusion_lib.DenoiseFn:
  """denoise_fn(x_t, gamma, self_cond, cond, dropout_rng) of the network with `params`, the
  function `Diffusion.loss_terms` trains: the raw output [B, ..., output channels], float32."""
  def denoise_fn(x_t, gamma, self_cond, cond, dropout_rng):
    model = nnx.merge(graphdef, params, copy=True)
    return model(jnp.concatenate([x_t, self_cond], axis=-1), gamma, cond,
                 dropout_rng=dropout_rng).astype(jnp.float32)
  return denoise_fn


def path_batch_first(path: jax.Array) -> jax.Array:
  """A sampler path [steps + 1, B, ...] -> [B, steps + 1, ...] (rows per sample, as
  `generation.generate` gathers them)."""
  return jnp.moveaxis(path, 0, 1)


def run_in_microbatches(fn: Callable[..., jax.Array], inputs: tuple, microbatch_size: int,
                        num_shards: int = 1) -> jax.Array:
  """fn(*inputs) computed on microbatches of `microbatch_size` rows in turn, joined again.

  Every array of `inputs` with the leading batch axis is cut (`distributed.microbatch_rows`,
  rows from each of `num_shards` shards); others (None, a scalar) pass whole. The same result
  as fn(*inputs) when fn treats every row on its own; 0 = one call on the whole batch.
  """
  if not microbatch_size:
    return fn(*inputs)
  batch = jax.tree.leaves(inputs[0])[0].shape[0]
  outputs = []
  for start, stop in distributed.microbatch_ranges(batch, microbatch_size, num_shards):
    rows = lambda a: (distributed.microbatch_rows(a, start, stop, num_shards)
                      if jnp.ndim(a) and a.shape[0] == batch else a)
    outputs.append(fn(*jax.tree.map(rows, inputs)))
  return distributed.join_microbatch_rows(outputs, num_shards)
