"""The captioning task: token ids of captions, conditioned on images; a ViT and a Transformer.

A caption is [L] token ids (SentencePiece, EOS then padding); the image it describes is the
conditioning. The networks (`captioning/model.py`) share a ViT encoder: a non-causal decoder
for Bit Diffusion (kind 'denoiser'), a causal one for the autoregressive baseline (kind
'autoregressive'), a non-causal classifier for the Glauber Generative Model (kind 'glauber').
Samples are captions, written as text and scored with the COCO metrics
(`captioning/evaluate.py`).
"""

import os
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bit_diffusion import param_keys
from bit_diffusion.captioning import data as data_lib
from bit_diffusion.captioning import model as model_lib
from bit_diffusion.captioning import scoring
from bit_diffusion.captioning import tokens as tokens_lib
from bit_diffusion.captioning import vit_checkpoint


class CaptionTask:
  """Captions [L] of token ids in [0, vocab_size), conditioned on images int [S, S, 3].

  Attributes:
    tokenizer: the CaptionTokenizer (loaded from tokenizer.path, or trained at start-up).
    example_shape: (L,) with L = tokenizer.max_length.
    channels_last: False: one value per position.
    num_bits: bits per token, ceil(log2(vocab_size)).
    vocab_size: the number of token ids.
    num_classes: 0 (the condition is an image, not a label).
  """
  SIGNATURE_FIELDS = {
      'data': ('image_size',),
      'tokenizer': ('max_length',),
      'model': ('patch_size', 'encoder_width', 'encoder_depth', 'encoder_mlp_dim',
                'encoder_heads', 'width', 'depth', 'mlp_dim', 'num_heads'),
  }
  channels_last = False
  num_classes = 0

  def __init__(self, config, tokenizer: Optional[tokens_lib.CaptionTokenizer] = None):
    self.config = config
    self.tokenizer = tokenizer or data_lib.create_tokenizer(config)
    self.example_shape = (config.tokenizer.max_length,)
    self.num_bits = self.tokenizer.num_bits
    self.vocab_size = self.tokenizer.vocab_size
    self._eval_source = None

  def signature(self) -> dict[str, Any]:
    """Checkpoint signature entries beyond the config fields: the vocabulary's size."""
    return {'tokenizer.vocab_size': self.vocab_size}

  def create_network(self, kind: str, *, rng: jax.Array, in_channels: int = 0,
                     out_channels: int = 0, out_kernel_size: int = 1) -> nnx.Module:
    """'denoiser': DiffusionCaptioner((x_t ++ self_cond) [B, L, in_channels], gamma, images) ->
    [B, L, out_channels]; 'autoregressive': AutoregressiveCaptioner(tokens_in, images) -> logits;
    'glauber': GlauberCaptioner(tokens_in with phi = vocab_size, time, images) -> logits."""
    del out_kernel_size  # A Transformer has no convolution.
    kwargs = model_lib.model_kwargs(self.config)
    if kind == 'denoiser':
      return model_lib.DiffusionCaptioner(in_channels=in_channels, out_channels=out_channels,
                                          **kwargs, rngs=param_keys.ParamKeys(rng))
    if kind == 'autoregressive':
      return model_lib.AutoregressiveCaptioner(vocab_size=self.vocab_size, **kwargs,
                                               rngs=param_keys.ParamKeys(rng))
    if kind == 'glauber':
      return model_lib.GlauberCaptioner(vocab_size=self.vocab_size, **kwargs,
                                        token_scale=self.config.ggm.token_scale,
                                        rngs=param_keys.ParamKeys(rng))
    raise ValueError(f'The captioning task has no {kind!r} network.')

  def initial_params(self, params: Any) -> Any:
    """The random parameters with a pretrained ViT copied in (model.vit_checkpoint), if set."""
    if not self.config.model.vit_checkpoint:
      return params
    return vit_checkpoint.load_into(params, self.config.model.vit_checkpoint)

  # Data.

  def train_iterator(self, batch_size: int, seed: int, start_step: int = 0) -> Any:
    """This process's batches {'images': int32 [b, S, S, 3], 'tokens': int32 [b, L]}."""
    return data_lib.CaptionBatchIterator(
        data_lib.create_source(self.config.data, 'train'), self.tokenizer,
        global_batch_size=batch_size, seed=seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
        prefetch=self.config.data.prefetch)

  def split_batch(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(token ids int32 [B, L], images int32 [B, S, S, 3]) of a batch."""
    return batch['tokens'], batch['images']

  def loss_mask(self, tokens: jax.Array) -> jax.Array:
    """bool [B, L]: the positions up to and including the first EOS (padding after it is not
    scored by the autoregressive baseline)."""
    is_eos = tokens == tokens_lib.EOS_ID
    return (jnp.cumsum(is_eos, axis=1) - is_eos) == 0

  # Sampling.

  def eval_source(self):
    """The held-out caption source (created once)."""
    if self._eval_source is None:
      self._eval_source = data_lib.create_source(self.config.data, 'eval')
    return self._eval_source

  def preview_conditions(self, num: int) -> tuple[np.ndarray, list[list[str]]]:
    """(images int32 [n, S, S, 3], their reference captions) of the first n <= num held-out
    images, captioned at every preview."""
    source = self.eval_source()
    batch = source.get(np.arange(min(num, len(source))))
    return batch['images'].astype(np.int32), batch['captions']

  def write_preview(self, samples: np.ndarray, references: list[list[str]], step: int,
                    workdir: str, writer) -> None:
    """WORKDIR/samples/captions_STEP.txt (prediction | reference per line), the text and the
    exact-match rate and BLEU-4 to TensorBoard."""
    predictions = self.tokenizer.ids_to_text(samples)
    lines = [f'{p} | {refs[0]}' for p, refs in zip(predictions, references)]
    path = os.path.join(workdir, 'samples', f'captions_{step:08d}.txt')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    writer.write_texts(step, {'samples': '  \n'.join(lines[:16])})
    writer.write_scalars(step, {'preview/exact_match': scoring.exact_match(predictions, references),
                                'preview/bleu4': scoring.bleu4(predictions, references)})
