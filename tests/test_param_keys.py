"""ParamKeys gives a network's initialisers the keys nnx.Rngs(params=key) gives: same parameters."""

import jax
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import methods
from bit_diffusion import param_keys
from configs import tiny


@pytest.mark.parametrize('key', [7, jax.random.PRNGKey(7), jax.random.key(7)],
                         ids=['int', 'raw uint32 key', 'typed key'])
def test_keys_are_those_of_nnx_rngs(key):
  ours, flax_rngs = param_keys.ParamKeys(key), nnx.Rngs(params=key)
  for _ in range(3):
    np.testing.assert_array_equal(jax.random.key_data(ours.params()),
                                  jax.random.key_data(flax_rngs.params()))


def test_network_parameters_equal_those_built_with_nnx_rngs(monkeypatch):
  """The tiny digits U-Net (convolutions, GroupNorm, attention, the noise embedding) built by
  its task with ParamKeys, then with nnx.Rngs in its place."""
  method = methods.create(tiny.tiny_digits())
  ours = nnx.state(method.create_network(jax.random.PRNGKey(3)), nnx.Param)
  monkeypatch.setattr(param_keys, 'ParamKeys', lambda key: nnx.Rngs(params=key))
  theirs = nnx.state(method.create_network(jax.random.PRNGKey(3)), nnx.Param)
  leaves = jax.tree.leaves(theirs)
  assert len(leaves) > 10
  for a, b in zip(jax.tree.leaves(ours), leaves, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
