"""The paper's CNN search space as a :class:`~darts_jax.spaces.SearchSpace`: the supernet of
``darts_jax.supernet`` (cells of 2 inputs and ``nodes`` intermediate nodes, every edge a
softmax(alpha)-mixed op, eq. 2), the alphas ``{'normal': (E, K), 'reduce': (E, K)}``, and the
original's genotype rule; plus the checks of the original code's reference files
(``shared/reference/README.md``: search network, hypergradients, one search step, the
evaluation network, the genotype rule).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import gradient_loop as gl
from darts_jax import hypergradient as hg
from darts_jax import interop
from darts_jax import search as search_lib
from darts_jax.genotypes import (PARAMETER_FREE, PRIMITIVES, Genotype, derive_genotype,
                                 derive_genotype_by_pairs, parse_genotype)
from darts_jax.networks import NetworkCIFAR
from darts_jax.spaces import ReferenceFormat, SearchSpace, verify_sections
from darts_jax.supernet import (SupernetConfig, architecture_mixing, check_image_size, init_alphas,
                                init_supernet, make_loss, make_mixing_loss, node_softmax,
                                supernet_shapes)

NAME = 'darts_cnn'


def make_space(config: SupernetConfig) -> SearchSpace:
  """The CNN search space of the supernet ``config``."""

  def init(key, input_shape, dtype):
    check_image_size(input_shape, len(config.reduction_layers), config.in_channels,
                     what='search network')
    variables = init_supernet(key, config, tuple(input_shape[1:3]), dtype)
    return variables.weights, variables.batch_stats

  def draw(directory, epoch, genotype, history):
    from darts_jax import viz
    os.makedirs(directory, exist_ok=True)
    viz.save_genotype_graphs(genotype, directory, f'genotype_epoch{epoch:03d}')
    viz.plot_alpha_heatmaps(history[-1], config.primitives,
                            os.path.join(directory, f'alphas_epoch{epoch:03d}.png'),
                            title=f'softmax(alpha), epoch {epoch}')
    viz.plot_alpha_evolution(history, config.primitives,
                             os.path.join(directory, 'alpha_evolution.png'))

  return SearchSpace(
      name=NAME,
      summary=f'{config.layers} cells, C={config.C}',
      choices=config.primitives,
      init=init,
      init_architecture=lambda key, dtype: init_alphas(key, config, dtype),
      make_loss=lambda train=True, compute_dtype=None: make_loss(config, train, compute_dtype),
      genotype=lambda alphas: derive_genotype(alphas, config.primitives, config.nodes,
                                              config.multiplier),
      genotype_from_dict=Genotype.from_dict,
      mixing=functools.partial(_mixing, nodes=config.nodes),
      draw=draw,
      make_mixing_loss=lambda train=True, compute_dtype=None: make_mixing_loss(
          config, train, compute_dtype),
      architecture_mixing=lambda alphas, dtype: architecture_mixing(alphas, dtype, config.nodes),
      parameter_free=tuple(op for op in config.primitives if op in PARAMETER_FREE),
      one_hot_genotype=lambda alphas: derive_genotype_by_pairs(
          alphas, config.primitives, config.nodes, config.multiplier))


def _mixing(alphas, nodes: int = 4) -> dict[str, np.ndarray]:
  # as the supernet mixes (eq. 2: jax.nn.softmax, float32 in a float32 run), for the logs and
  # plots; the genotype rule takes the original's softmax in the alphas' own precision instead
  # (genotypes.mixing_weights), whose near-ties may rank otherwise. With PC-DARTS's betas, each
  # edge's row is weighted by its normalised beta: the weights its genotype rule ranks
  out = {}
  for kind in ('normal', 'reduce'):
    m = jax.nn.softmax(jnp.asarray(alphas[kind], jnp.float32), axis=-1)
    if f'betas_{kind}' in alphas:
      m = m * node_softmax(jnp.asarray(alphas[f'betas_{kind}'], jnp.float32), nodes)[:, None]
    out[kind] = np.asarray(m)
  return out


def config_from_run(cfg: Mapping, num_classes: int, in_channels: int) -> SupernetConfig:
  """The supernet a search config describes (``experiments/configs/search.py``) for a dataset
  of ``num_classes`` classes and ``in_channels`` channels."""
  return SupernetConfig(C=cfg['init_channels'], num_classes=num_classes, layers=cfg['layers'],
                        nodes=cfg['nodes'], multiplier=cfg['multiplier'],
                        stem_multiplier=cfg['stem_multiplier'], in_channels=in_channels,
                        primitives=tuple(cfg.get('primitives') or ()) or PRIMITIVES,
                        remat_cells=bool(cfg.get('remat_cells', False)),
                        partial_channels=cfg.get('partial_channels', 1),
                        edge_normalization=bool(cfg.get('edge_normalization', False)),
                        auxiliary_skip=bool(cfg.get('auxiliary_skip', False)))


def space_from_run(cfg: Mapping, num_classes: int, in_channels: int) -> SearchSpace:
  return make_space(config_from_run(cfg, num_classes, in_channels))


# ----------------------------------------------------------------------------------------------
# reference files of the original code (quark0/darts, cnn/)
# ----------------------------------------------------------------------------------------------

# second-order quantities: (file key, estimator, with the momentum buffer)
_SECOND_ORDER = (('hypergrad_exact_nomomentum', 'exact', False),
                 ('hypergrad_fd_nomomentum', 'finite_difference', False),
                 ('hypergrad_exact', 'exact', True), ('hypergrad_fd', 'finite_difference', True))


def _nchw_to_nhwc(x) -> jax.Array:
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def search_config(meta: Mapping[str, Any]) -> SupernetConfig:
  """The search network a reference file's ``meta['search']`` describes."""
  m = meta['search']
  return SupernetConfig(C=m['C'], num_classes=m['num_classes'], layers=m['layers'],
                        nodes=m.get('steps', 4), multiplier=m.get('multiplier', 4),
                        stem_multiplier=m.get('stem_multiplier', 3),
                        in_channels=m.get('image', [32, 32, 3])[-1],
                        primitives=tuple(m.get('primitives', ())) or PRIMITIVES,
                        # PC-DARTS's files (PCDARTS_README.md): K, and the edge betas with it
                        partial_channels=m.get('k', 1), edge_normalization='k' in m)


def _inner(wd: float, momentum: float, xi) -> optax.GradientTransformation:
  # the reference's virtual step: SGD(xi, momentum) + weight decay, from the file's buffer
  return optax.chain(optax.add_decayed_weights(wd), optax.sgd(xi, momentum=momentum))


@functools.lru_cache(maxsize=8)
def _derivatives(config: SupernetConfig, second_order: tuple[tuple[str, int], ...], wd: float,
                 momentum: float, fd_r: float, steps: tuple[search_lib.SearchHParams, ...]):
  """jit: the gradients at (w, alpha) on both batches; L_val and its gradients at the virtual
  step w' without momentum; each (estimator, 1 with the momentum buffer or 0 without) of
  ``second_order``, as the search computes them (``gradient_loop``); and one full search step
  from fresh optimiser states by each of ``steps`` (``search.step_plan``, what
  ``search.search_step`` runs). All in one loop: each derivative program is compiled once for
  every quantity."""
  loss = make_loss(config)

  @jax.jit
  def run(weights, alphas, stats, train, val, buffers, xi):
    inner = _inner(wd, momentum, xi)
    at_w = gl.Plan(tuple(gl.Call(gl.GRADIENT, lambda _, b=b: gl.Probe(weights, alphas, b))
                         for b in (train, val)), lambda r: (r(0), r(1)))
    # L_val and its gradients at the virtual step w' without momentum (the direct part d of
    # eq. 7 and its v): one more pair of iterations of the same programs
    fresh = optax.tree_utils.tree_set(inner.init(weights), trace=buffers[0])
    w_prime = lambda g: optax.apply_updates(weights, inner.update(g, fresh, weights)[0])  # noqa
    at_w_prime = gl.Plan((gl.Call(gl.GRADIENT, lambda _: gl.Probe(weights, alphas, train)),
                          gl.Call(gl.GRADIENT, lambda r: gl.Probe(w_prime(r(0).g_w), alphas,
                                                                  val))), lambda r: r(1))
    plans = [gl.plan(estimator, inner, weights, alphas,
                     optax.tree_utils.tree_set(inner.init(weights), trace=buffers[with_momentum]),
                     xi, train, val, fd_r) for estimator, with_momentum in second_order]
    step_plans = [search_lib.step_plan(hp, search_lib.init_search_state(
        hp, weights, alphas, stats, jax.random.PRNGKey(0)), train, val) for hp in steps]
    calls, finishes = gl.concatenate([at_w, at_w_prime, *plans, *step_plans])
    results = gl.run(loss, stats, calls)
    n = len(plans)
    return (finishes[0](results), finishes[1](results),
            [finish(results)[0] for finish in finishes[2:2 + n]],
            [finish(results)[0] for finish in finishes[2 + n:]])
  return run


@functools.lru_cache(maxsize=8)
def _unrolled(config: SupernetConfig, wd: float, momentum: float):
  """jit: eq. (6) as jax.grad through the whole virtual step (``unrolled``, K = 1).

  Its depthwise convolutions are XLA's own grouped convolutions, not the tap sums with custom
  derivatives that the CPU search runs: so the comparison with the exact hypergradient checks
  the chain rule in pieces against plain autodiff through an independent lowering. It also
  traces and compiles 2-3x faster (reverse over reverse of one op, not of k*k taps). Compiled at
  XLA's default -O2 whatever the environment asks: at -O0 (the test suite's speed-up for
  compiling) XLA:CPU's grouped convolution runs 20x slower (180 s against 8 s here).
  """
  loss = make_loss(dataclasses.replace(config, depthwise_impl='xla'))

  @functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 2})
  def run(weights, alphas, stats, train, val, buf, xi):
    inner = _inner(wd, momentum, xi)
    state = optax.tree_utils.tree_set(inner.init(weights), trace=buf)
    return hg.unrolled(hg.bind_loss(loss, stats, train), hg.bind_loss(loss, stats, val),
                       weights, alphas, inner, state, inner_steps=1)[0]
  return run


def step_hparams(meta_search: Mapping, estimator: str = 'finite_difference'
                 ) -> search_lib.SearchHParams:
  """A reference step's optimisers: fresh states, ``estimator`` for the alpha gradient (the DARTS
  files' step: the finite difference of eq. 7; PC-DARTS's ``step``: first order)."""
  m, adam, sgd = meta_search, meta_search.get('arch_adam', {}), meta_search.get('weight_sgd', {})
  return search_lib.SearchHParams(
      w_lr=sgd.get('lr', m.get('xi', 0.025)), w_momentum=m.get('momentum', 0.9),
      w_weight_decay=m.get('weight_decay', 3e-4),
      grad_clip=sgd.get('grad_clip', m.get('grad_clip', 5.0)),
      alpha_lr=adam.get('lr', 3e-4), alpha_b1=adam.get('b1', 0.5), alpha_b2=adam.get('b2', 0.999),
      alpha_eps=adam.get('eps', 1e-8), alpha_weight_decay=adam.get('weight_decay', 1e-3),
      estimator=estimator, fd_r=m.get('fd_r', 0.01))


@functools.lru_cache(maxsize=8)
def _forward(config: SupernetConfig, train: bool):
  """jit: the loss and its aux (new BatchNorm statistics, logits) in training or eval mode."""
  return jax.jit(make_loss(config, train))


@functools.lru_cache(maxsize=8)
def _eval_apply(model: NetworkCIFAR):
  @jax.jit
  def apply(variables, images):
    logits_eval, _ = model.apply(variables, images, False)
    (logits_train, logits_aux), _ = model.apply(variables, images, True, mutable=['batch_stats'])
    return logits_eval, logits_train, logits_aux
  return apply


def _named(ref: Mapping, prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


# architecture keys as a reference file names them: ours -> the file's
_ARCH_KEYS = {'normal': 'alphas_normal', 'reduce': 'alphas_reduce',
              'betas_normal': 'betas_normal', 'betas_reduce': 'betas_reduce'}


def reference_architecture(ref: Mapping, prefix: str, config: SupernetConfig
                           ) -> dict[str, jax.Array]:
  """The architecture pytree a reference file stores under ``prefix`` (the alphas, and
  PC-DARTS's betas where ``config`` has edge normalisation)."""
  return {k: jnp.asarray(ref[prefix + _ARCH_KEYS[k]]) for k in config.architecture_shapes}


def _check_architecture_gradient(report, name: str, g, ref: Mapping, kind: str) -> None:
  """A gradient in the architecture as the files stack it: [normal, reduce] of the alphas at
  ``name``; of PC-DARTS's betas at ``name`` + '_betas' (``grad_alphas_*``: ``grad_betas_*``)."""
  report.check(name, np.stack([g['normal'], g['reduce']]), ref[name], kind)
  betas_name = (name.replace('grad_alphas_', 'grad_betas_') if 'grad_alphas_' in name
                else name + '_betas')
  if 'betas_normal' in g and betas_name in ref:
    report.check(betas_name, np.stack([g['betas_normal'], g['betas_reduce']]), ref[betas_name],
                 kind)


def _running_stats(config: SupernetConfig, weights, stats) -> dict[str, np.ndarray]:
  """BatchNorm running statistics by the original's names (the weights' tree tells each
  module's kind, hence its names)."""
  named = interop.to_original({'params': weights, 'batch_stats': stats}, nodes=config.nodes,
                              primitives=config.primitives)
  return {k: v for k, v in named.items() if k.endswith(('.running_mean', '.running_var'))}


def _verify_search(ref: Mapping[str, np.ndarray], meta, report) -> None:
  config = search_config(meta)
  x_train = _nchw_to_nhwc(ref['search/x_train'])
  shapes = supernet_shapes(config, x_train.shape[1:3], x_train.dtype)
  load = lambda prefix, collections: interop.from_original(  # noqa: E731
      _named(ref, prefix), collections, nodes=config.nodes, require=('params',),
      primitives=config.primitives)
  variables = load('search/w/', {'params': shapes.weights, 'batch_stats': shapes.batch_stats})
  weights, stats = variables['params'], variables.get('batch_stats', {})
  if _named(ref, 'search/bn/'):  # the running statistics' own entries (PC-DARTS's files)
    # (the params' shapes tell each module's kind, hence the original's names)
    stats = interop.from_original(_named(ref, 'search/bn/'),
                                  {'params': shapes.weights, 'batch_stats': shapes.batch_stats},
                                  nodes=config.nodes, require=('batch_stats',),
                                  primitives=config.primitives)['batch_stats']
  alphas = reference_architecture(ref, 'search/', config)
  train = (x_train, jnp.asarray(ref['search/y_train']))
  val = (_nchw_to_nhwc(ref['search/x_val']), jnp.asarray(ref['search/y_val']))
  m = meta['search']
  if 'search/logits_eval' in ref:  # eval mode: the running statistics, before any update
    (_, eval_aux) = _forward(config, False)(weights, alphas, stats, train)
    report.check('search/logits_eval', eval_aux.logits, ref['search/logits_eval'], 'logits')
  buffers = (jax.tree_util.tree_map(jnp.zeros_like, weights),)  # (without, with momentum)
  if _named(ref, 'search/momentum/'):
    buffers += (load('search/momentum/', {'params': shapes.weights})['params'],)
  second_order = [(name, estimator, with_momentum) for name, estimator, with_momentum
                  in _SECOND_ORDER if f'search/{name}' in ref]
  if any(with_momentum and len(buffers) == 1 for *_, with_momentum in second_order):
    raise KeyError('search/momentum/*')
  wd, momentum, xi = m.get('weight_decay', 3e-4), m.get('momentum', 0.9), m.get('xi', 0.025)
  # the full steps the file holds: DARTS's 'step' by eq. 7; PC-DARTS's 'step' first order (its
  # train_search.py's default) and 'step_unrolled' by eq. 7
  steps = [(prefix, step_hparams(m, estimator)) for prefix, estimator in
           (('search/step/', 'first_order' if 'k' in m else 'finite_difference'),
            ('search/step_unrolled/', 'finite_difference'))
           if any(k.startswith(prefix) for k in ref)]
  run = _derivatives(config, tuple((e, int(w)) for _, e, w in second_order), wd, momentum,
                     m.get('fd_r', 0.01), tuple(hp for _, hp in steps))
  (at_train, at_val), at_w_prime, hypergradients, stepped = run(weights, alphas, stats, train,
                                                                val, buffers, xi)

  report.check('search/logits_train', at_train.aux.logits, ref['search/logits_train'], 'logits')
  report.check('search/loss_train', at_train.loss, ref['search/loss_train'], 'loss')
  if 'search/loss_val' in ref:
    report.check('search/loss_val', at_val.loss, ref['search/loss_val'], 'loss')
  ref_g = _named(ref, 'search/grad_w_train/')
  if ref_g:
    report.check_named('search/grad_w_train',
                       interop.to_original({'params': at_train.g_w}, nodes=config.nodes,
                                           primitives=config.primitives), ref_g, 'gradient')
  ref_bn = _named(ref, 'search/bn_after_train/')
  if ref_bn:  # one training-mode forward's update of the running statistics
    report.check_named('search/bn_after_train',
                       _running_stats(config, weights, at_train.aux.batch_stats), ref_bn,
                       'roundoff')
  if 'search/grad_alphas_train' in ref:
    _check_architecture_gradient(report, 'search/grad_alphas_train', at_train.g_alpha, ref,
                                 'gradient')
  if 'search/hypergrad_first_order' in ref:
    _check_architecture_gradient(report, 'search/hypergrad_first_order', at_val.g_alpha, ref,
                                 'gradient')
  if 'search/unrolled_nomomentum/loss_val' in ref:  # L_val(w') and its d, without momentum
    report.check('search/unrolled_nomomentum/loss_val', at_w_prime.loss,
                 ref['search/unrolled_nomomentum/loss_val'], 'loss')
    _check_architecture_gradient(report, 'search/unrolled_nomomentum/grad_alphas_val',
                                 at_w_prime.g_alpha, ref, 'gradient')
  for (name, estimator, _), g in zip(second_order, hypergradients):
    kind = 'gradient' if estimator == 'exact' else 'finite_difference'
    _check_architecture_gradient(report, f'search/{name}', g, ref, kind)
    if name == 'hypergrad_fd_nomomentum' and 'search/hvp_fd_nomomentum' in ref:
      # eq. 7 is d - xi * hvp: the finite-difference Hessian-vector product itself
      hvp = jax.tree_util.tree_map(lambda d, h: (d - h) / xi, at_w_prime.g_alpha, g)
      _check_architecture_gradient(report, 'search/hvp_fd_nomomentum', hvp, ref,
                                   'finite_difference')
    if name == 'hypergrad_exact' and config.partial_channels == 1 and report.cross_checks:
      # eq. 6 by the chain rule in pieces (what the search runs) against jax.grad through the
      # whole virtual step (unrolled, K = 1): the same number up to round-off (the DARTS
      # files; the network is the same code under PC-DARTS, and the compile costs minutes)
      unrolled = _unrolled(config, wd, momentum)(weights, alphas, stats, train, val,
                                                 buffers[1], xi)
      report.check('search/exact_vs_unrolled', np.stack([g['normal'], g['reduce']]),
                   np.stack([unrolled['normal'], unrolled['reduce']]), 'same_math')
  for (prefix, hp), new in zip(steps, stepped):
    _verify_step(ref, prefix, hp, new, config, weights, alphas, stats, train, val,
                 at_w_prime.g_w, report)


def _verify_step(ref, prefix, hp, new, config, weights, alphas, stats, train, val, v, report
                 ) -> None:
  """``new``: the state after one full search step from fresh optimiser states (Adam on the
  architecture by ``hp``'s estimator, then clipped SGD on the weights with the new
  architecture). Its running statistics as the original's in-place modules leave them: our
  step keeps only the weight step's update, so they are recomputed by chaining the forwards the
  original ran (training mode)."""
  for key in config.architecture_shapes:
    if prefix + _ARCH_KEYS[key] in ref:
      report.check(prefix + _ARCH_KEYS[key], new.alphas[key], ref[prefix + _ARCH_KEYS[key]],
                   'step')
  if prefix + 'loss_train' in ref:
    report.check(prefix + 'loss_train', new.metrics.train_loss, ref[prefix + 'loss_train'],
                 'step')
  ref_w = _named(ref, prefix + 'w/')
  if ref_w:
    report.check_named(prefix + 'w', interop.to_original(
        {'params': new.weights}, nodes=config.nodes, primitives=config.primitives), ref_w,
                       'step')
  ref_bn = _named(ref, prefix + 'bn/')
  if ref_bn or prefix + 'logits_train' in ref:
    forward = _forward(config, True)
    if hp.estimator == 'first_order':  # the alpha step's forward: validation at w
      points = [(weights, val)]
    else:  # eq. 7's: training at w, w + R v and w - R v (R = r / ||v||)
      r = hp.fd_r / float(hg.tree_norm(v))
      points = [(weights, train), (hg.tree_axpy(r, v, weights), train),
                (hg.tree_axpy(-r, v, weights), train)]
    for w, batch in points:
      stats = forward(w, alphas, stats, batch)[1].batch_stats
    _, aux = forward(weights, new.alphas, stats, train)  # the weight step's forward
    if prefix + 'logits_train' in ref:
      report.check(prefix + 'logits_train', aux.logits, ref[prefix + 'logits_train'], 'step')
    if ref_bn:
      report.check_named(prefix + 'bn', _running_stats(config, weights, aux.batch_stats),
                         ref_bn, 'step')


def _eval_genotype(spec) -> Genotype:
  return parse_genotype(spec if isinstance(spec, (str, dict)) else dict(spec))


def _verify_eval(ref: Mapping[str, np.ndarray], meta, report) -> None:
  m = meta['eval']
  named = _named(ref, 'eval/w/')
  num_classes = named['classifier.weight'].shape[0]
  x = _nchw_to_nhwc(ref['eval/x'])
  model = NetworkCIFAR(C=m['C'], num_classes=num_classes, layers=m['layers'],
                       auxiliary=bool(m.get('auxiliary', True)),
                       genotype=_eval_genotype(m['genotype']),
                       stem_multiplier=m.get('stem_multiplier', 3), in_channels=x.shape[-1])
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, True))
  variables = interop.from_original(named, shapes, nodes=len(model.genotype.normal) // 2)
  logits_eval, logits_train, logits_aux = _eval_apply(model)(variables, x)
  report.check('eval/logits_eval', logits_eval, ref['eval/logits_eval'], 'logits')
  report.check('eval/logits_train', logits_train, ref['eval/logits_train'], 'logits')
  if 'eval/logits_aux_train' in ref:
    report.check('eval/logits_aux_train', logits_aux, ref['eval/logits_aux_train'], 'logits')


def _verify_genotypes(ref, meta, report) -> None:
  config = search_config(meta)
  expected = meta.get('genotypes', [])
  fields = ('normal', 'normal_concat', 'reduce', 'reduce_concat')
  mismatches = [
      k for k, want in enumerate(expected)
      if derive_genotype(reference_architecture(ref, f'genotype/{k}/', config), config.primitives,
                         config.nodes, config.multiplier)
      != Genotype.from_dict({f: want[f] for f in fields})]
  report.count('genotypes', len(expected), mismatches)
  if 'search/genotype' in ref:  # the search architecture's, as the original's string
    ours = derive_genotype(reference_architecture(ref, 'search/', config), config.primitives,
                           config.nodes, config.multiplier)
    report.count('search/genotype', 1,
                  [] if ours == parse_genotype(str(ref['search/genotype'])) else [0])


# every quantity of a CNN reference file that its meta promises
verify = verify_sections(_verify_search, _verify_eval, _verify_genotypes)


REFERENCE = ReferenceFormat(
    # recurrent files have these keys too, and their sizes at the top level (spaces/rnn.py)
    # PC-DARTS's files are this format with K and the edge betas (meta.search.k)
    name=NAME, detect=lambda meta: (any(k in meta for k in ('search', 'eval', 'genotypes'))
                                    and 'sizes' not in meta),
    verify=verify)
