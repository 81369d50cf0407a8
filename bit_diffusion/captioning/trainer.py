"""Captioning on the shared train loop: `train.Trainer` subclasses for diffusion and AR.

`CaptionTrainer` overrides only the task hooks of `train.Trainer`: a caption is [L] token ids,
written as [L, k] analog bits (`encode_batch`), and the images ride along as the conditioning
that `Diffusion.loss_terms` passes to the network (its `labels`). Algorithm 1, self-conditioning,
the optimizer, EMA, sharding, checkpoints and resumption are the image task's, unchanged.

`AutoregressiveCaptionTrainer` is the baseline: the same encoder-decoder with a causal decoder,
trained with token cross-entropy (its own `compute_loss`), decoded greedily.
"""

import os
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import samplers
from bit_diffusion import train
from bit_diffusion.captioning import data as data_lib
from bit_diffusion.captioning import model as model_lib
from bit_diffusion.captioning import scoring
from bit_diffusion.captioning import tokens as tokens_lib
from bit_diffusion.captioning import vit_checkpoint

# Config fields that fix the shapes and meaning of a captioner's parameters.
CAPTION_SIGNATURE_FIELDS = {
    'data': ('image_size', 'num_bits'),
    'tokenizer': ('max_length',),
    'bits': ('encoding', 'scale'),
    'diffusion': ('prediction', 'loss', 'output'),
    'model': ('kind', 'patch_size', 'encoder_width', 'encoder_depth', 'encoder_mlp_dim',
              'encoder_heads', 'width', 'depth', 'mlp_dim', 'num_heads'),
}


def _with_token_bits(config, num_bits: int):
  """`config` with data.num_bits set to the tokenizer's bits per token (a copy if it changes).

  data.num_bits = 0 means "derive it"; any other value must be what the vocabulary needs.
  """
  if config.data.num_bits == num_bits:
    return config
  if config.data.num_bits:
    raise ValueError(f'data.num_bits={config.data.num_bits} does not fit the tokenizer: its '
                     f'vocabulary needs ceil(log2(vocab)) = {num_bits} bits per token. Set '
                     '--config.data.num_bits=0 to derive it from the tokenizer.')
  config = config.copy_and_resolve_references()
  config.unlock()
  config.data.num_bits = num_bits
  return config


class CaptionTrainer(train.Trainer):
  """Bit Diffusion captioning: tokens -> analog bits [B, L, k], conditioned on the images."""
  SIGNATURE_FIELDS = CAPTION_SIGNATURE_FIELDS

  def __init__(self, config, mesh: Optional[Mesh] = None,
               tokenizer: Optional[tokens_lib.CaptionTokenizer] = None):
    if config.diffusion.label_dropout:
      raise ValueError('Captioning needs diffusion.label_dropout=0 (the images are the labels).')
    self.tokenizer = tokenizer or data_lib.create_tokenizer(config)
    super().__init__(_with_token_bits(config, self.tokenizer.num_bits), mesh)
    if self.config.model.vit_checkpoint:
      initialise = self.init_state

      def init_state(rng):  # Random weights, then the pretrained encoder copied in.
        state = initialise(rng)
        params = vit_checkpoint.load_into(state.params, self.config.model.vit_checkpoint)
        params = jax.device_put(params, self.state_sharding.params)
        return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
      self.init_state = init_state

  # Task hooks.

  def create_model(self, rng: jax.Array) -> nnx.Module:
    return model_lib.DiffusionCaptioner(num_bits=self.tokenizer.num_bits,
                                        **model_lib.model_kwargs(self.config),
                                        rngs=nnx.Rngs(params=rng))

  def encode_batch(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(analog bits float32 [B, L, k] of batch['tokens'] [B, L], images int32 [B, S, S, 3])."""
    return self.diffusion.codec.encode(batch['tokens'][..., None]), batch['images']

  def create_train_iterator(self, start_step: int) -> Any:
    return data_lib.CaptionBatchIterator(
        data_lib.create_source(self.config.data, 'train'), self.tokenizer,
        global_batch_size=self.config.training.batch_size, seed=self.config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), prefetch=self.config.data.prefetch)

  def write_samples(self, state: train.TrainState, step: int, workdir: str, writer) -> None:
    """Captions `training.num_grid_samples` held-out images with the EMA weights.

    Writes WORKDIR/samples/captions_STEP.txt (prediction | reference per line), the text and
    the held-out exact-match rate and BLEU-4 to TensorBoard.
    """
    if not hasattr(self, '_preview_fn'):
      self._preview_fn = self.make_caption_fn()
      self._preview_source = data_lib.create_source(self.config.data, 'eval')
    num = min(self.config.training.num_grid_samples, len(self._preview_source))
    batch = self._preview_source.get(np.arange(num))
    ids = generate_ids(self._preview_fn, state.ema_params, batch['images'],
                       jax.random.fold_in(jax.random.PRNGKey(self.config.seed + 1), step),
                       self.device_multiple(num))
    predictions = self.tokenizer.ids_to_text(ids)
    if jax.process_index() == 0:
      lines = [f'{p} | {refs[0]}' for p, refs in zip(predictions, batch['captions'])]
      path = os.path.join(workdir, 'samples', f'captions_{step:08d}.txt')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
      writer.write_texts(step, {'samples': '  \n'.join(lines[:16])})
      writer.write_scalars(step, {
          'preview/exact_match': scoring.exact_match(predictions, batch['captions']),
          'preview/bleu4': scoring.bleu4(predictions, batch['captions'])})

  # Generation.

  def make_caption_fn(self, **overrides) -> Callable[..., jax.Array]:
    """Jitted fn(params, rng, images int [B, S, S, 3]) -> token ids int32 [B, L] (Algorithm 2).

    Keyword overrides of `config.sampling`: sampler, steps, td, ddpm_variance, self_condition.
    The image is encoded once; each step runs only the decoder.
    """
    s = dict(sampler=self.config.sampling.sampler, steps=self.config.sampling.steps,
             td=self.config.sampling.td, ddpm_variance=self.config.sampling.ddpm_variance,
             self_condition=self.config.sampling.self_condition)
    s.update(overrides)
    diffusion, graphdef = self.diffusion, self.graphdef
    shape_tail = (self.config.tokenizer.max_length, self.tokenizer.num_bits)

    def caption_fn(params, rng, images):
      model = nnx.merge(graphdef, params, copy=True)
      image_tokens = model.encode(images)

      def x0_fn(x, gamma, self_cond):
        output = model.decode(jnp.concatenate([x, self_cond], axis=-1), gamma, image_tokens)
        return diffusion.clipped_x0(output, x, gamma)
      x0, _ = samplers.sample(x0_fn, (images.shape[0],) + shape_tail, rng,
                              gamma_fn=diffusion.gamma_fn, **s)
      return diffusion.codec.decode(x0)[..., 0]  # [B, L, k] -> [B, L]
    return self._jit_generation(caption_fn)

  def _jit_generation(self, fn):
    batch = NamedSharding(self.mesh, P('data'))
    return jax.jit(fn, in_shardings=(self.replicated, self.replicated, batch),
                   out_shardings=batch)


class AutoregressiveCaptionTrainer(CaptionTrainer):
  """The baseline: causal decoder, token cross-entropy, greedy decoding."""

  def create_model(self, rng: jax.Array) -> nnx.Module:
    return model_lib.AutoregressiveCaptioner(vocab_size=self.tokenizer.vocab_size,
                                             **model_lib.model_kwargs(self.config),
                                             rngs=nnx.Rngs(params=rng))

  def compute_loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[jax.Array, diffusion_lib.LossTerms]:
    """Teacher-forced cross-entropy over the tokens up to and including EOS.

    Reported in the train loop's terms: `loss` is the cross-entropy per token, `bit_error` the
    teacher-forced token error rate, `x0_mse` is 0 (no diffusion here).
    """
    del rng  # No noise, no dropout.
    tokens, images = batch['tokens'], batch['images']  # [B, L], [B, S, S, 3]
    is_eos = tokens == tokens_lib.EOS_ID
    mask = (jnp.cumsum(is_eos, axis=1) - is_eos) == 0  # Positions up to the first EOS.
    count = jnp.maximum(mask.sum(axis=1), 1)
    model = nnx.merge(self.graphdef, params, copy=True)
    logits = model(shift_right(tokens, model.start_id), images).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, L]
    loss = jnp.sum(ce * mask, axis=1) / count
    errors = jnp.sum((jnp.argmax(logits, -1) != tokens) * mask, axis=1) / count
    return jnp.mean(loss), diffusion_lib.LossTerms(loss=loss, x0_mse=jnp.zeros_like(loss),
                                                   bit_error=errors)

  def make_caption_fn(self, **unused_overrides) -> Callable[..., jax.Array]:
    """Jitted fn(params, rng, images) -> greedy token ids int32 [B, L] (sampling knobs unused)."""
    graphdef, length = self.graphdef, self.config.tokenizer.max_length

    def caption_fn(params, rng, images):
      del rng
      model = nnx.merge(graphdef, params, copy=True)
      image_tokens = model.encode(images)
      tokens = jnp.full((images.shape[0], length), tokens_lib.PAD_ID, jnp.int32)

      def body(i, tokens):  # The causal mask makes position i depend on tokens < i only.
        logits = model.decode(shift_right(tokens, model.start_id), image_tokens)
        return tokens.at[:, i].set(jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32))
      return jax.lax.fori_loop(0, length, body, tokens)
    return self._jit_generation(caption_fn)


def shift_right(tokens: jax.Array, start_id: int) -> jax.Array:
  """[B, L] -> [B, L]: start_id, then tokens[:, :-1] (the decoder's teacher-forced input)."""
  return jnp.concatenate([jnp.full_like(tokens[:, :1], start_id), tokens[:, :-1]], axis=1)


def trainer_class(config) -> type:
  """The trainer of model.kind: 'diffusion' (CaptionTrainer) or 'autoregressive' (baseline)."""
  kinds = {'diffusion': CaptionTrainer, 'autoregressive': AutoregressiveCaptionTrainer}
  if config.model.kind not in kinds:
    raise ValueError(f'Unknown model.kind {config.model.kind!r}; choose one of {tuple(kinds)}.')
  return kinds[config.model.kind]


def generate_ids(caption_fn, params: Any, images: np.ndarray, rng: jax.Array,
                 batch_size: int) -> np.ndarray:
  """Captions all `images` (uint8/int [N, S, S, 3]) in padded batches; int32 [N, L]."""
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                             chunk.dtype)])
    ids = caption_fn(params, jax.random.fold_in(rng, start), jnp.asarray(padded, jnp.int32))
    outputs.append(np.asarray(jax.device_get(ids))[:len(chunk)])
  return np.concatenate(outputs, axis=0)
