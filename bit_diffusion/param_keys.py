"""The random keys of a network's parameter initialisers, counted in Python.

A network's layers take `rngs` and call `rngs.params()` for each initialiser's key. `ParamKeys`
gives them the keys `nnx.Rngs(params=key)` gives (fold_in(key, 0), fold_in(key, 1), ...: the same
parameters), but counts its calls in a Python int where `nnx.Rngs` keeps a count array that it
updates on every call. Under `nnx.eval_shape` or a jitted initialiser (every abstract, restored
or sharded build of a network) that count is a tracer, and flax 0.12.8 reads the tracer's
`sharding` on each update; JAX answers with an AttributeError whose message it builds by walking
every equation traced so far (`DynamicJaxprTracer._origin_msg`), so the build grows with the
square of the network's size: the ImageNet-64 U-Net's abstract build took 3.4 s, 0.8 s with
these keys (configs/cifar10.py: 1.4 -> 0.4 s, after a first build; docs/benchmarks.md).

Only the initialisers' stream: a layer that keeps `rngs` for later (flax's Dropout or attention
dropout given rngs) needs `nnx.Rngs`; this library passes dropout keys at call time.
"""

from typing import Union

import jax


class ParamKeys:
  """`rngs` for a network's constructor: `.params()` -> the next key, as nnx.Rngs(params=key)."""

  def __init__(self, key: Union[jax.Array, int]):
    """key: an int seed, a raw uint32 key [2] (jax.random.PRNGKey) or a typed key, converted as
    nnx.Rngs converts them."""
    if isinstance(key, int):
      key = jax.random.key(key)
    elif isinstance(key, jax.Array) and key.dtype == 'uint32':
      key = jax.random.wrap_key_data(key)
    self._key = key
    self._count = 0

  def params(self) -> jax.Array:
    """The next parameter key: fold_in(key, n) at the n-th call (from 0)."""
    key = jax.random.fold_in(self._key, self._count)
    self._count += 1
    return key
