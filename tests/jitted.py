"""Network calls under one jit for the tests that run a network on a few inputs.

Called eagerly, an NNX module compiles each of its operations on its own (hundreds of small XLA
compiles for a U-Net: the DisCo-Diff latent test took 23.6 s eagerly, 9.2 s jitted); under
`nnx.jit` the whole call compiles once per module structure and input shapes.
"""

from flax import nnx

# module_call(module, *args) == module(*args), jitted.
module_call = nnx.jit(lambda module, *args: module(*args))
