"""Converts pytorch-fid's FID Inception weights (.pth) to the .npz that FID here reads.

  pip install torch   # only for this conversion; or run it on any machine that has PyTorch
  python tools/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth \
      [~/.cache/bit_diffusion/pt_inception-2015-12-05-6726825d.npz]

The .pth is the state dict that pytorch-fid publishes at
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(the TF-GAN / TTUR "inception-2015-12-05" network ported to PyTorch). The .npz keeps its keys and
PyTorch layouts; `bit_diffusion/metrics/inception.py` transposes them on loading. The result is
checked against the Flax network (every key present, every shape right) before it is written.
The output defaults to the cache that `--mode=eval` looks in ($BIT_DIFFUSION_CACHE or
~/.cache/bit_diffusion).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bit_diffusion.metrics import inception  # noqa: E402


def main(argv: list[str]) -> int:
  if len(argv) not in (2, 3):
    print(__doc__)
    return 2
  pth_path = argv[1]
  npz_path = argv[2] if len(argv) == 3 else os.path.join(inception.default_cache_dir(),
                                                         inception.NPZ_NAME)
  try:
    import torch  # noqa: F401
  except ImportError:
    print('This conversion needs PyTorch (pip install torch), once; FID itself does not.')
    return 1
  inception.convert_pth(pth_path, npz_path)
  with np.load(npz_path, allow_pickle=False) as data:
    arrays = {key: data[key] for key in data.files}
  _, abstract_state = inception.abstract_inception()
  inception.state_from_state_dict(abstract_state, arrays)  # Raises on any mismatch.
  print(f'Wrote {npz_path} ({len(arrays)} arrays, checked against the Flax network).')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
