"""Turns an original DARTS PyTorch checkpoint (``weights.pt``) into an ``.npz`` of numpy arrays.

  pip install torch   # only for this conversion; darts_jax itself never imports torch
  python -m experiments.convert_torch_checkpoint weights.pt weights.npz [--prefix eval/w/]

The output maps the original parameter names (``cells.0._ops.3.op.1.weight``...) to arrays, as
``darts_jax.interop.load_npz_weights`` / ``from_original`` expect. A ``module.`` prefix left by
``nn.DataParallel`` is stripped; ``num_batches_tracked`` counters are dropped.
"""

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.convert_torch_checkpoint')
  parser.add_argument('checkpoint', help='a state_dict (or a whole model) saved by torch.save')
  parser.add_argument('out', help='output .npz path')
  parser.add_argument('--prefix', default='', help='prepended to every key, e.g. eval/w/')
  args = parser.parse_args(argv)
  try:
    import torch
  except ImportError:
    print('error: this conversion needs PyTorch (pip install torch); darts_jax does not',
          file=sys.stderr)
    return 2
  obj = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
  if hasattr(obj, 'state_dict'):
    obj = obj.state_dict()
  if isinstance(obj, dict) and 'state_dict' in obj:
    obj = obj['state_dict']
  if not isinstance(obj, dict):
    print(f'error: {args.checkpoint} holds a {type(obj).__name__}, not a state_dict',
          file=sys.stderr)
    return 2
  arrays = {}
  for name, value in obj.items():
    if name.endswith('num_batches_tracked'):
      continue
    name = name[len('module.'):] if name.startswith('module.') else name
    arrays[args.prefix + name] = value.detach().cpu().numpy()
  np.savez(args.out, **arrays)
  print(f'wrote {len(arrays)} arrays to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
