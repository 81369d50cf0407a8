"""The DisCo-Diff method: Bit Diffusion conditioned on a few learned discrete latents.

Xu, Corso, Jaakkola, Vahdat & Kreis, "DisCo-Diff: Enhancing Continuous Diffusion Models with
Discrete Latents" (ICML 2024), on the analog bits of Chen, Zhang & Hinton. The math is
`disco.py`; the diffusion, its sampler and the bits are Bit Diffusion's (`BitDiffusion`, held
by composition). One network module holds everything a checkpoint needs:

  encoder   the task's 'latent_encoder': clean bits -> logits [B, m, k];
  codebook  [m, k, E] and null_embedding [m, E]: a latent code's embedding, and "no latent";
  denoiser  the task's 'denoiser', built with latent_shape (m, E): its condition is (the task's
            condition or None, latents [B, m, E]);
  prior     `transformer.AutoregressiveTransformer` over the m codes (vocabulary k), as the
            autoregressive baseline's network.

Both stages run in one training (`disco.two_stage_optimizer`): steps [0, N - P) train encoder,
codebook and denoiser with the diffusion loss (the prior fits the current codes alongside, on
its own parameters); the last P = disco.prior_steps steps of training.num_steps = N freeze them
and fit the prior to the codes of the now fixed encoder. A checkpoint saved before step N holds
no finished prior: sampling from it is refused (`check_restored`).
"""

from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from bit_diffusion import disco as disco_lib
from bit_diffusion import distributed
from bit_diffusion import param_keys
from bit_diffusion import transformer
from bit_diffusion.methods import autoregressive
from bit_diffusion.methods import bit_diffusion


class DisCoNetwork(nnx.Module):
  """The encoder, codebook, null embedding, denoiser and prior of DisCo-Diff: one module, one
  set of parameters, one checkpoint."""

  def __init__(self, *, encoder: nnx.Module, denoiser: nnx.Module, prior: nnx.Module,
               num_latents: int, codebook_size: int, embedding_dim: int, rngs: nnx.Rngs):
    self.encoder, self.denoiser, self.prior = encoder, denoiser, prior
    init = nnx.initializers.normal(1.0)
    self.codebook = nnx.Param(init(rngs.params(), (num_latents, codebook_size, embedding_dim)))
    self.null_embedding = nnx.Param(init(rngs.params(), (num_latents, embedding_dim)))

  def embed(self, one_hot: jax.Array) -> jax.Array:
    """(Relaxed) one-hot codes [B, m, k] -> latents [B, m, E]: each latent's codebook row."""
    return jnp.einsum('bmk,mke->bme', one_hot, self.codebook[...])

  def null_latents(self, batch: int) -> jax.Array:
    """The null embedding for `batch` examples, [B, m, E]."""
    return jnp.broadcast_to(self.null_embedding[...][None], (batch,) + self.null_embedding.shape)


class DisCo:
  """DisCo-Diff on the data of `task`, with Bit Diffusion's analog bits and sampler.

  Attributes:
    bits: the BitDiffusion of the same config (codec, diffusion, sampler settings, checks).
    metric_names: the diffusion's terms, prior_loss (nats per latent of the extracted codes)
      and code_entropy (nats; near 0 when the encoder is sure of its codes).
  """
  metric_names = ('loss', 'x0_mse', 'bit_error', 'prior_loss', 'code_entropy')

  def __init__(self, config, task):
    d = config.disco
    if d.num_latents < 1:
      raise ValueError(f'disco.num_latents={d.num_latents}: DisCo-Diff needs at least one '
                       'discrete latent (the paper: 1 on the toy, 10 on ImageNet). For no '
                       "latents use config.method='bit_diffusion'.")
    if d.codebook_size < 2:
      raise ValueError(f'disco.codebook_size={d.codebook_size}: a latent needs a codebook of at '
                       'least 2 codes to carry information (the paper: 8 on the toy, 100 on '
                       "ImageNet). For no latents use config.method='bit_diffusion'.")
    if d.embedding_dim < 1:
      raise ValueError(f'disco.embedding_dim={d.embedding_dim} must be >= 1.')
    if not d.temperature > 0:
      raise ValueError(f'disco.temperature={d.temperature}: the Gumbel-softmax temperature must '
                       'be > 0 (the paper: 1).')
    if not 0 <= d.latent_dropout < 1:
      raise ValueError(f'disco.latent_dropout={d.latent_dropout} must lie in [0, 1).')
    if d.extraction not in disco_lib.EXTRACTIONS:
      raise ValueError(f'Unknown disco.extraction {d.extraction!r}; choose one of '
                       f'{disco_lib.EXTRACTIONS}.')
    self.config, self.task = config, task
    self.bits = bit_diffusion.BitDiffusion(config, task)

  @property
  def diffusion(self):
    """Bit Diffusion's Diffusion (codec, schedule, loss)."""
    return self.bits.diffusion

  @property
  def first_stage_steps(self) -> int:
    """Steps of the first stage (encoder and denoiser); the prior's stage follows."""
    return self.config.training.num_steps - self.config.disco.prior_steps

  def check(self, num_devices: int) -> None:
    """Bit Diffusion's checks, the stages and the guidance."""
    _refuse_autoguidance(self.bits.autoguidance({}))
    self.bits.check(num_devices)
    d, num_steps = self.config.disco, self.config.training.num_steps
    if not 1 <= d.prior_steps < num_steps:
      raise ValueError(f'disco.prior_steps={d.prior_steps} must lie in [1, training.num_steps='
                       f'{num_steps}): the last prior_steps steps fit the prior to the codes of '
                       'the trained, frozen encoder (the second stage).')
    self._check_guidance(d.guidance)
    if not d.prior_temperature >= 0:
      raise ValueError(f'disco.prior_temperature={d.prior_temperature} must be >= 0 (0: argmax).')

  def _check_guidance(self, guidance: float) -> None:
    """Guidance w on the latents: at training's config check and at every sampler."""
    if guidance and not self.config.disco.latent_dropout:
      raise ValueError(f'Guidance {guidance} on the latents needs a model trained with '
                       'disco.latent_dropout > 0 (it learns the denoiser without latents from '
                       'dropped ones).')

  def check_restored(self, step: int) -> None:
    """Refuses to sample from a checkpoint saved before the prior's stage ended."""
    num_steps = self.config.training.num_steps
    if step < num_steps:
      raise ValueError(
          f'The checkpoint of step {step} holds no fitted latent prior: DisCo-Diff fits it to the '
          f'codes of the trained encoder in the last disco.prior_steps='
          f'{self.config.disco.prior_steps} steps of training.num_steps={num_steps}. Run '
          '--mode=train again in this workdir to finish training, then sample.')

  def signature(self) -> dict[str, Any]:
    d, model = self.config.disco, self.config.model
    return {**self.bits.signature(), 'method': 'disco', 'disco.num_latents': d.num_latents,
            'disco.codebook_size': d.codebook_size, 'disco.embedding_dim': d.embedding_dim,
            'disco.prior_width': d.prior_width, 'disco.prior_depth': d.prior_depth,
            'disco.prior_heads': d.prior_heads, 'model.encoder_width': model.encoder_width,
            'model.encoder_depth': model.encoder_depth}

  def wrap_optimizer(self, optimizer):
    """The engine's optimizer run per group: the prior every step, the rest frozen after the
    first stage (`disco.two_stage_optimizer`)."""
    is_prior = lambda path: getattr(path[0], 'key', None) == 'prior'
    return disco_lib.two_stage_optimizer(optimizer, self.first_stage_steps, is_prior)

  def create_network(self, rng: jax.Array) -> DisCoNetwork:
    d, bits = self.config.disco, self.bits
    encoder_rng, denoiser_rng, prior_rng, codebook_rng = jax.random.split(rng, 4)
    encoder = self.task.create_network(
        'latent_encoder', in_channels=bits.bit_channels, num_latents=d.num_latents,
        codebook_size=d.codebook_size, rng=encoder_rng)
    denoiser = self.task.create_network(
        'denoiser', in_channels=2 * bits.bit_channels,
        out_channels=bits.diffusion.output_channels(bits.values_per_position),
        out_kernel_size=1 if bits.diffusion.output == 'softmax' else 3,
        latent_shape=(d.num_latents, d.embedding_dim), rng=denoiser_rng)
    prior = transformer.AutoregressiveTransformer(
        vocab_size=d.codebook_size, max_length=d.num_latents, width=d.prior_width,
        depth=d.prior_depth, mlp_dim=4 * d.prior_width, num_heads=d.prior_heads,
        rngs=param_keys.ParamKeys(prior_rng))
    return DisCoNetwork(encoder=encoder, denoiser=denoiser, prior=prior,
                        num_latents=d.num_latents, codebook_size=d.codebook_size,
                        embedding_dim=d.embedding_dim, rngs=param_keys.ParamKeys(codebook_rng))

  # Training.

  def loss(self, graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array],
           rng: jax.Array, batch_sharding: Optional[NamedSharding] = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(diffusion loss + prior loss, per-example metrics of `metric_names`, each [B]).

    The two losses reach disjoint parameters (the prior's codes are stop-gradient), so their
    sum trains each with its own loss."""
    data, cond = self.task.split_batch(batch)
    bits = self.bits.encode(data)
    if batch_sharding is not None:
      bits = jax.lax.with_sharding_constraint(bits, batch_sharding)
    model = nnx.merge(graphdef, params, copy=True)
    d = self.config.disco

    def denoise_fn(x_t, gamma, self_cond, cond, dropout_rng):
      return model.denoiser(jnp.concatenate([x_t, self_cond], axis=-1), gamma, cond,
                            dropout_rng=dropout_rng).astype(jnp.float32)

    def prior_logits_fn(codes):
      return model.prior(autoregressive.shift_right(codes, model.prior.start_id), None)

    terms = disco_lib.loss_terms(
        self.bits.diffusion, encode_fn=model.encoder, embed_fn=model.embed,
        null_embedding=model.null_embedding[...], denoise_fn=denoise_fn,
        prior_logits_fn=prior_logits_fn, bits=bits, cond=cond, rng=rng,
        temperature=d.temperature, latent_dropout=d.latent_dropout,
        straight_through=d.straight_through, extraction=d.extraction)
    diffusion = terms.diffusion
    total = jnp.mean(diffusion.loss) + jnp.mean(terms.prior_loss)
    return total, {'loss': diffusion.loss, 'x0_mse': diffusion.x0_mse,
                   'bit_error': diffusion.bit_error, 'prior_loss': terms.prior_loss,
                   'code_entropy': terms.code_entropy}

  # Latents and sampling.

  def make_extract_fn(self, graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
    """A jitted fn(params, data int [B, *example_shape]) -> codes int32 [B, m] (argmax)."""
    def extract(params, data):
      model = nnx.merge(graphdef, params, copy=True)
      return disco_lib.extract_codes(model.encoder(self.bits.encode(data)))
    return jax.jit(extract)

  def make_prior_sample_fn(self, graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
    """A jitted fn(params, rng, batch) -> codes int32 [batch, m] drawn from the prior at
    disco.prior_temperature (batch static)."""
    def draw(params, rng, batch):
      model = nnx.merge(graphdef, params, copy=True)
      return autoregressive.decode_tokens(model.prior, None, rng, batch,
                                          self.config.disco.num_latents,
                                          self.config.disco.prior_temperature)
    return jax.jit(draw, static_argnums=2)

  def make_sample_fn(self, graphdef: nnx.GraphDef, mesh: Optional[Mesh] = None, *,
                     infill: bool = False, fixed_codes: bool = False,
                     **overrides) -> Callable[..., jax.Array]:
    """A jitted fn(params, rng, cond) -> integer samples int32 [B, *example_shape]: codes from
    the prior, then Bit Diffusion's sampler conditioned on their embedding. fixed_codes: cond
    is (the task's condition, codes int [B, m]) and those codes are used instead of the prior's
    (tools/disco_latents.py: samples sharing a code).

    Overrides: those of `BitDiffusion.make_sample_fn` (sampler, steps, td, ddpm_variance,
    self_condition, trajectory, guidance_interval), and guidance (w on the latents; default
    disco.guidance), prior_temperature (default disco.prior_temperature; 0: the most likely
    codes).
    """
    if infill:
      raise ValueError('DisCo-Diff has no infilling (its latents would have to be inferred from '
                       "a partial example); use config.method='bit_diffusion'.")
    d = self.config.disco
    settings = self.bits.sampler_settings(overrides)
    guidance = settings.pop('guidance', d.guidance)
    temperature = settings.pop('prior_temperature', d.prior_temperature)
    trajectory = settings.pop('trajectory', False)
    self._check_guidance(guidance)
    _refuse_autoguidance(self.bits.autoguidance(settings))
    settings.pop('autoguidance', None)
    interval = self.bits.guidance_interval(settings)
    settings.pop('guidance_interval', None)
    num_shards = 1 if mesh is None else mesh.shape['data']

    def sample_fn(params, rng, cond):
      model = nnx.merge(graphdef, params, copy=True)
      batch = jax.tree.leaves(cond)[0].shape[0]
      prior_rng, diffusion_rng = jax.random.split(rng)
      if fixed_codes:
        cond, codes = cond
      else:
        codes = autoregressive.decode_tokens(model.prior, None, prior_rng, batch,
                                             d.num_latents, temperature)  # [B, m]
      latents = model.embed(jax.nn.one_hot(codes, d.codebook_size))
      task_cond = cond if self.bits.uses_condition() else None
      context = model.denoiser.encode_condition((task_cond, latents))
      null = model.denoiser.encode_condition((task_cond, model.null_latents(batch)))
      result = self.bits.sample_bits(model.denoiser, diffusion_rng, batch, context, null,
                                     guidance, settings, num_shards,
                                     guidance_interval=interval, keep_path=trajectory)
      if trajectory:
        return bit_diffusion.path_batch_first(result[2])
      return self.bits.decode(result[0])

    return distributed.jit_sampler(sample_fn, self.config.cpu, mesh)


def _refuse_autoguidance(weight: float) -> None:
  """DisCo-Diff samples without autoguidance (its guide would need its own prior's codes)."""
  if weight:
    raise ValueError(f'sampling.autoguidance={weight}: autoguidance is implemented for '
                     "config.method='bit_diffusion', not DisCo-Diff; set it to 0 (guidance on "
                     'the latents: disco.guidance).')
