"""Checks our networks against reference outputs of the original DARTS code.

A reference file (format: ``shared/reference/README.md`` of the project; ``tests/data`` holds
one) stores the original's weights, inputs and outputs in float64. :func:`verify` recomputes
every quantity it can with our implementation and reports, per quantity, the relative error
``max|ours - reference| / max|reference|`` against a tolerance. Quantities that this version
cannot compute yet are reported as ``"not yet computed"``, never as passed.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import hypergradient as hg
from darts_jax import interop
from darts_jax import search as search_lib
from darts_jax.genotypes import Genotype, derive_genotype, parse_genotype
from darts_jax.networks import NetworkCIFAR
from darts_jax.supernet import SupernetConfig, make_loss, supernet_shapes

PASS, FAIL, NOT_COMPUTED = 'pass', 'fail', 'not yet computed'

# tolerances (relative, max-norm) per dtype of the recomputation; float32 checks a backend's
# lowering (e.g. on a GPU) against round-off, float64 checks the semantics exactly
TOLERANCES_BY_DTYPE = {
    'float64': {'logits': 1e-9, 'loss': 1e-9, 'gradient': 1e-8, 'finite_difference': 1e-6,
                'step': 1e-8},
    'float32': {'logits': 1e-4, 'loss': 1e-4, 'gradient': 1e-3, 'finite_difference': 1e-2,
                'step': 1e-3},
}

# second-order quantities: (file key, estimator, with the momentum buffer)
_SECOND_ORDER = (('hypergrad_exact_nomomentum', 'unrolled', False),
                 ('hypergrad_fd_nomomentum', 'finite_difference', False),
                 ('hypergrad_exact', 'unrolled', True), ('hypergrad_fd', 'finite_difference', True))


def relative_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return float('inf')
  scale = np.max(np.abs(ref)) if ref.size else 0.0
  diff = np.max(np.abs(ours - ref)) if ref.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


def _nchw_to_nhwc(x) -> jax.Array:
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def search_config(meta: Mapping[str, Any]) -> SupernetConfig:
  m = meta['search']
  return SupernetConfig(C=m['C'], num_classes=m['num_classes'], layers=m['layers'],
                        steps=m.get('steps', 4), multiplier=m.get('multiplier', 4),
                        stem_multiplier=m.get('stem_multiplier', 3),
                        in_channels=m.get('image', [32, 32, 3])[-1],
                        primitives=tuple(m.get('primitives', ())) or SupernetConfig().primitives)


@functools.lru_cache(maxsize=8)
def _search_value_and_grad(config: SupernetConfig):
  loss = make_loss(config)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@functools.lru_cache(maxsize=8)
def _second_order(config: SupernetConfig, method: str, wd: float, momentum: float, r: float):
  """jit(hypergradient) for the reference's inner optimiser: SGD(xi, momentum) + weight decay."""
  loss = make_loss(config)

  @jax.jit
  def run(weights, alphas, stats, train, val, buf, xi):
    inner = optax.chain(optax.add_decayed_weights(wd), optax.sgd(xi, momentum=momentum))
    state = optax.tree_utils.tree_set(inner.init(weights), trace=buf)
    options = dict(inner=inner, inner_state=state)
    if method == 'finite_difference':
      options.update(xi=xi, r=r)
    return hg.hypergradient(method, hg.bind_loss(loss, stats, train),
                            hg.bind_loss(loss, stats, val), weights, alphas, **options)[0]
  return run


@functools.lru_cache(maxsize=8)
def _search_step(config: SupernetConfig, hp: search_lib.SearchHParams):
  loss = make_loss(config)
  return jax.jit(lambda state, train, val: search_lib.search_step(hp, loss, state, train, val))


def step_hparams(meta_search: Mapping) -> search_lib.SearchHParams:
  """The reference step's optimisers: fresh states, the finite-difference estimator (eq. 7)."""
  m, adam = meta_search, meta_search.get('arch_adam', {})
  return search_lib.SearchHParams(
      w_lr=m.get('xi', 0.025), w_momentum=m.get('momentum', 0.9),
      w_weight_decay=m.get('weight_decay', 3e-4), grad_clip=m.get('grad_clip', 5.0),
      alpha_lr=adam.get('lr', 3e-4), alpha_b1=adam.get('b1', 0.5), alpha_b2=adam.get('b2', 0.999),
      alpha_eps=adam.get('eps', 1e-8), alpha_weight_decay=adam.get('weight_decay', 1e-3),
      estimator='finite_difference', fd_r=m.get('fd_r', 0.01))


@functools.lru_cache(maxsize=8)
def _eval_apply(model: NetworkCIFAR):
  @jax.jit
  def apply(variables, images):
    logits_eval, _ = model.apply(variables, images, False)
    (logits_train, logits_aux), _ = model.apply(variables, images, True, mutable=['batch_stats'])
    return logits_eval, logits_train, logits_aux
  return apply


class _Quantities(dict):
  """name -> result; knows the tolerances of the dtype being checked."""

  def __init__(self, tolerances: Mapping[str, float]):
    super().__init__()
    self.tolerances = dict(tolerances)


def _check(report: _Quantities, name, ours, ref, kind: str):
  tol = report.tolerances[kind]
  err = relative_error(ours, ref)
  report[name] = {'status': PASS if err <= tol else FAIL, 'rel_err': err, 'tol': tol}


def _verify_search(ref: Mapping[str, np.ndarray], meta, report) -> None:
  config = search_config(meta)
  x_train = _nchw_to_nhwc(ref['search/x_train'])
  shapes = supernet_shapes(config, x_train.shape[1:3], x_train.dtype)
  named = {k[len('search/w/'):]: v for k, v in ref.items() if k.startswith('search/w/')}
  variables = interop.from_original(named, {'params': shapes.weights,
                                            'batch_stats': shapes.batch_stats},
                                    steps=config.steps, require=('params',),
                                    primitives=config.primitives)
  weights, stats = variables['params'], variables.get('batch_stats', {})
  alphas = {'normal': jnp.asarray(ref['search/alphas_normal']),
            'reduce': jnp.asarray(ref['search/alphas_reduce'])}
  value_and_grad = _search_value_and_grad(config)
  train = (x_train, jnp.asarray(ref['search/y_train']))
  val = (_nchw_to_nhwc(ref['search/x_val']), jnp.asarray(ref['search/y_val']))
  (loss_train, aux), (g_w, g_a) = value_and_grad(weights, alphas, stats, train)
  (loss_val, _), (_, g_a_val) = value_and_grad(weights, alphas, stats, val)

  _check(report, 'search/logits_train', aux.logits, ref['search/logits_train'],
         'logits')
  _check(report, 'search/loss_train', loss_train, ref['search/loss_train'], 'loss')
  if 'search/loss_val' in ref:
    _check(report, 'search/loss_val', loss_val, ref['search/loss_val'], 'loss')
  g_named = interop.to_original({'params': g_w}, steps=config.steps,
                                 primitives=config.primitives)
  ref_g = {k[len('search/grad_w_train/'):]: v for k, v in ref.items()
           if k.startswith('search/grad_w_train/')}
  if ref_g:
    if set(ref_g) != set(g_named):
      report['search/grad_w_train'] = {'status': FAIL, 'rel_err': float('inf'),
                                       'tol': report.tolerances['gradient'],
                                       'detail': 'parameter names differ'}
    else:
      names = sorted(ref_g)
      _check(report, 'search/grad_w_train',
             np.concatenate([np.ravel(g_named[n]) for n in names]),
             np.concatenate([np.ravel(ref_g[n]) for n in names]), 'gradient')
  if 'search/grad_alphas_train' in ref:
    _check(report, 'search/grad_alphas_train', np.stack([g_a['normal'], g_a['reduce']]),
           ref['search/grad_alphas_train'], 'gradient')
  if 'search/hypergrad_first_order' in ref:
    _check(report, 'search/hypergrad_first_order', np.stack([g_a_val['normal'],
                                                             g_a_val['reduce']]),
           ref['search/hypergrad_first_order'], 'gradient')
  m = meta['search']
  momentum_named = {k[len('search/momentum/'):]: v for k, v in ref.items()
                    if k.startswith('search/momentum/')}
  zeros = jax.tree_util.tree_map(jnp.zeros_like, weights)
  buffers = {False: zeros}
  if momentum_named:
    buffers[True] = interop.from_original(
        momentum_named, {'params': shapes.weights}, steps=config.steps, require=('params',),
        primitives=config.primitives)['params']
  for name, method, with_momentum in _SECOND_ORDER:
    if f'search/{name}' not in ref:
      continue
    if with_momentum not in buffers:
      raise KeyError('search/momentum/*')
    run = _second_order(config, method, m.get('weight_decay', 3e-4), m.get('momentum', 0.9),
                        m.get('fd_r', 0.01))
    g = run(weights, alphas, stats, train, val, buffers[with_momentum], m.get('xi', 0.025))
    kind = 'gradient' if method == 'unrolled' else 'finite_difference'
    _check(report, f'search/{name}', np.stack([g['normal'], g['reduce']]), ref[f'search/{name}'],
           kind)
  if any(k.startswith('search/step/') for k in ref):
    _verify_step(ref, m, config, weights, alphas, stats, train, val, report)


def _verify_step(ref, m, config, weights, alphas, stats, train, val, report) -> None:
  """One full search step from fresh optimiser states: Adam on the eq. (7) alpha gradient, then
  clipped SGD on the weights with the new alphas."""
  hp = step_hparams(m)
  state = search_lib.init_search_state(hp, weights, alphas, stats, jax.random.PRNGKey(0))
  new, _ = _search_step(config, hp)(state, train, val)
  for cell in ('normal', 'reduce'):
    _check(report, f'search/step/alphas_{cell}', new.alphas[cell], ref[f'search/step/alphas_{cell}'],
           'step')
  if 'search/step/loss_train' in ref:
    _check(report, 'search/step/loss_train', new.metrics.train_loss,
           ref['search/step/loss_train'], 'step')
  ref_w = {k[len('search/step/w/'):]: v for k, v in ref.items() if k.startswith('search/step/w/')}
  if ref_w:
    w_named = interop.to_original({'params': new.weights}, steps=config.steps,
                                  primitives=config.primitives)
    if set(ref_w) != set(w_named):
      report['search/step/w'] = {'status': FAIL, 'rel_err': float('inf'),
                                 'tol': report.tolerances['step'],
                                 'detail': 'parameter names differ'}
    else:
      names = sorted(ref_w)
      _check(report, 'search/step/w', np.concatenate([np.ravel(w_named[n]) for n in names]),
             np.concatenate([np.ravel(ref_w[n]) for n in names]), 'step')


def _eval_genotype(spec) -> Genotype:
  return parse_genotype(spec if isinstance(spec, (str, dict)) else dict(spec))


def _verify_eval(ref: Mapping[str, np.ndarray], meta, report) -> None:
  m = meta['eval']
  named = {k[len('eval/w/'):]: v for k, v in ref.items() if k.startswith('eval/w/')}
  num_classes = named['classifier.weight'].shape[0]
  x = _nchw_to_nhwc(ref['eval/x'])
  model = NetworkCIFAR(C=m['C'], num_classes=num_classes, layers=m['layers'],
                       auxiliary=bool(m.get('auxiliary', True)),
                       genotype=_eval_genotype(m['genotype']),
                       stem_multiplier=m.get('stem_multiplier', 3), in_channels=x.shape[-1])
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, True))
  variables = interop.from_original(named, shapes, steps=len(model.genotype.normal) // 2)
  logits_eval, logits_train, logits_aux = _eval_apply(model)(variables, x)
  _check(report, 'eval/logits_eval', logits_eval, ref['eval/logits_eval'], 'logits')
  _check(report, 'eval/logits_train', logits_train, ref['eval/logits_train'],
         'logits')
  if 'eval/logits_aux_train' in ref:
    _check(report, 'eval/logits_aux_train', logits_aux, ref['eval/logits_aux_train'],
           'logits')


def _verify_genotypes(ref, meta) -> dict:
  config = search_config(meta)
  expected = meta.get('genotypes', [])
  mismatches = []
  for k, want in enumerate(expected):
    got = derive_genotype({'normal': ref[f'genotype/{k}/alphas_normal'],
                           'reduce': ref[f'genotype/{k}/alphas_reduce']},
                          config.primitives, config.steps, config.multiplier)
    if got != Genotype.from_dict(want):
      mismatches.append(k)
  total = len(expected)
  return {'status': PASS if not mismatches else FAIL, 'matched': total - len(mismatches),
          'total': total, 'mismatches': mismatches}


def verify(path: str, dtype: str = 'float64') -> dict:
  """Recomputes every quantity of the reference file at ``path``; returns the report dict.

  ``dtype='float64'`` (the exact check) needs ``jax.config.update('jax_enable_x64', True)``;
  ``'float32'`` recomputes in float32 with round-off tolerances. ``report['ok']`` is True only
  when every quantity in the file was computed and passed.
  """
  if dtype not in TOLERANCES_BY_DTYPE:
    raise ValueError(f'dtype={dtype!r}: allowed {", ".join(TOLERANCES_BY_DTYPE)}')
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError('verify() in float64 needs x64: call '
                     "jax.config.update('jax_enable_x64', True) first")
  try:
    with np.load(path, allow_pickle=False) as f:
      ref = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read reference file {path!r}: {e}') from None
  # inputs and weights in the recomputation's dtype (references compare in float64 anyway)
  ref = {k: v.astype(dtype) if v.dtype == np.float64 else v for k, v in ref.items()}
  if 'meta' not in ref:
    raise ValueError(f'{path!r} has no "meta" entry: not a reference file of this format')
  meta = json.loads(str(ref['meta']))
  quantities = _Quantities(TOLERANCES_BY_DTYPE[dtype])
  try:
    if 'search' in meta:
      _verify_search(ref, meta, quantities)
    if 'eval' in meta:
      _verify_eval(ref, meta, quantities)
    if meta.get('genotypes'):
      quantities['genotypes'] = _verify_genotypes(ref, meta)
  except KeyError as e:
    raise ValueError(f'{path!r} lacks entry {e} that its meta promises') from None
  counts = {s: sum(q['status'] == s for q in quantities.values())
            for s in (PASS, FAIL, NOT_COMPUTED)}
  return {'file': str(path), 'dtype': dtype, 'relative_error': 'max|ours-ref| / max|ref|',
          'quantities': dict(quantities), 'summary': counts,
          'ok': counts[FAIL] == 0 and counts[NOT_COMPUTED] == 0}
