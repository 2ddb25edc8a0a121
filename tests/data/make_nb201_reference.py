"""Writes ``nb201_reference.npz``: float64 outputs of NAS-Bench-201's own code, which
``tests/test_nas_bench_201.py`` checks ``darts_jax.nas_bench_201`` against.

Run with PyTorch and a checkout of D-X-Y/AutoDL-Projects (the benchmark's code; its ``xautodl``
package is imported from there, nothing of it is copied):

  python tests/data/make_nb201_reference.py /path/to/AutoDL-Projects tests/data/nb201_reference.npz

The file holds, for a small search network (C=4, N=1, 8x8 images, batch 4; every edge mixed by
softmax(alpha), as its DARTS search runs it) and for one small benchmark network:
their state_dicts (random BN affine values and running statistics, so that nothing is trivially
1 or 0), the inputs, the training-mode logits and loss, the gradients of the loss in the arch
parameters and in every weight, the running statistics after that forward, and the network's
eval-mode logits. ``meta`` (JSON) names the sizes and the architecture.
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch

C, N, IMAGE, BATCH, CLASSES = 4, 1, 8, 4, 10
ARCH = '|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|'


def _load(root: str):
  """The benchmark's modules from ``root`` without its package's import chain."""
  for pkg in ('xautodl', 'xautodl.models', 'xautodl.models.cell_infers',
              'xautodl.models.cell_searchs'):
    m = types.ModuleType(pkg)
    m.__path__ = [os.path.join(root, *pkg.split('.'))]
    sys.modules[pkg] = m
  out = {}
  for name in ('cell_operations', 'cell_infers.cells', 'cell_infers.tiny_network',
               'cell_searchs.genotypes', 'cell_searchs.search_cells',
               'cell_searchs.search_model_darts'):
    full = 'xautodl.models.' + name
    spec = importlib.util.spec_from_file_location(
        full, os.path.join(root, 'xautodl', 'models', *name.split('.')) + '.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    out[name] = module
  return out


def _randomise_bn(net: torch.nn.Module, gen: torch.Generator) -> None:
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      if m.affine:
        m.weight.data = 1 + 0.2 * torch.randn(m.weight.shape, generator=gen)
        m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=gen)
      if m.track_running_stats:
        m.running_mean.data = 0.1 * torch.randn(m.running_mean.shape, generator=gen)
        m.running_var.data = 1 + 0.3 * torch.rand(m.running_var.shape, generator=gen)


def _state(prefix: str, net: torch.nn.Module) -> dict:
  return {f'{prefix}{k}': v.detach().numpy().copy() for k, v in net.state_dict().items()
          if not k.endswith('num_batches_tracked')}


def main(root: str, out: str) -> None:
  torch.set_default_dtype(torch.float64)
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(1)
  m = _load(root)
  ops = m['cell_operations'].NAS_BENCH_201
  ref = {}
  x = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)
  y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
  ref['x'], ref['y'] = x.numpy(), y.numpy()
  criterion = torch.nn.CrossEntropyLoss()

  search = m['cell_searchs.search_model_darts'].TinyNetworkDarts(C, N, 4, CLASSES, ops, False,
                                                                  True)
  _randomise_bn(search, gen)
  search.arch_parameters.data = 0.5 * torch.randn(search.arch_parameters.shape, generator=gen)
  ref.update(_state('search/w/', search))
  ref['search/alphas'] = search.arch_parameters.detach().numpy().copy()
  search.train()
  _, logits = search(x)
  loss = criterion(logits, y)
  loss.backward()
  ref['search/logits_train'] = logits.detach().numpy()
  ref['search/loss_train'] = loss.detach().numpy()
  ref['search/grad_alphas'] = search.arch_parameters.grad.numpy().copy()
  for k, p in search.named_parameters():
    if k != 'arch_parameters':
      ref[f'search/grad/{k}'] = p.grad.numpy().copy()
  ref.update(_state('search/after_train/', search))

  structure = m['cell_searchs.genotypes'].Structure.str2structure(ARCH)
  net = m['cell_infers.tiny_network'].TinyNetwork(C, N, structure, CLASSES)
  _randomise_bn(net, gen)
  ref.update(_state('net/w/', net))
  net.eval()
  ref['net/logits_eval'] = net(x)[1].detach().numpy()
  net.train()
  ref['net/logits_train'] = net(x)[1].detach().numpy()

  meta = {'C': C, 'N': N, 'num_classes': CLASSES, 'arch': ARCH, 'ops': list(ops),
          'source': 'D-X-Y/AutoDL-Projects xautodl/models (TinyNetworkDarts, TinyNetwork)'}
  np.savez_compressed(out, meta=json.dumps(meta), **ref)
  print(f'wrote {out}: {len(ref)} arrays')


if __name__ == '__main__':
  main(*sys.argv[1:3])
