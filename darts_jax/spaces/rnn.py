"""The paper's recurrent search space (Penn Treebank): checks of the original code's recurrent
reference files (``shared/reference/RNN_README.md``: the search model and its BatchNorm, the
architect's hypergradients with their intermediates, one search step, the genotype rule, the
evaluation model).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import hypergradient as hg
from darts_jax import recurrent as rc
from darts_jax import recurrent_search as rs
from darts_jax.spaces import ReferenceFormat, verify_sections

NAME = 'darts_rnn'


def detect(meta: Mapping[str, Any]) -> bool:
  """Recurrent files name their sizes at the top level (``sizes.ntoken``)."""
  return isinstance(meta.get('sizes'), Mapping) and 'ntoken' in meta['sizes']


def architect_hparams(meta_search: Mapping) -> rs.ArchitectHParams:
  a = meta_search.get('architect', {})
  return rs.ArchitectHParams(eta=a.get('eta', 20.0), weight_decay=a.get('wdecay', 5e-7),
                             clip=a.get('clip', 0.25), r=a.get('r', 0.01))


def search_hparams(meta_search: Mapping) -> rs.RecurrentSearchHParams:
  """The reference step's settings: the original architect (finite difference, its quirks),
  a fresh Adam on alpha, the weight step's TAR."""
  adam = meta_search.get('architect', {}).get('arch_adam', {})
  b1, b2 = adam.get('betas', (0.9, 0.999))
  return rs.RecurrentSearchHParams(
      architect=architect_hparams(meta_search), alpha_lr=adam.get('lr', 3e-3), alpha_b1=b1,
      alpha_b2=b2, alpha_eps=adam.get('eps', 1e-8),
      alpha_weight_decay=adam.get('weight_decay', 1e-3),
      tar_beta=meta_search.get('weight_step', {}).get('tar_beta', 1e-3))


def _named(ref: Mapping, prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def _weights(ref: Mapping, prefix: str):
  return jax.tree_util.tree_map(jnp.asarray, rc.from_original(_named(ref, prefix)))


def _check_weights(report, name: str, ours, ref: Mapping, prefix: str, kind: str) -> None:
  report.check_named(name, rc.to_original(ours), _named(ref, prefix), kind)


def _forward(primitives):
  # the nodes as a scan: the same numbers as the unrolled cell the runs use (tested), compiled
  # in a fraction of the time
  return lambda w, a, stats, tokens, hidden: rc.search_forward(w, a, stats, tokens, hidden, True,
                                                               primitives, nodes='scan')


@functools.lru_cache(maxsize=8)
def _search_program(primitives: tuple[str, ...], hp: rs.RecurrentSearchHParams):
  """jit: every quantity of the search model and the architect at (w, alpha), in one program."""
  forward = _forward(primitives)

  @jax.jit
  def run(w, alpha, stats, train, hidden_train, val, hidden_val):
    train_out = forward(w, alpha, stats, train[0], hidden_train)
    eval_out = rc.search_forward(w, alpha, stats, train[0], hidden_train, False, primitives,
                                nodes='scan')
    loss = lambda tokens, targets, hidden: lambda w_, a_: rc.nll(  # noqa: E731
        forward(w_, a_, stats, tokens, hidden).log_probs, targets)
    train_loss, val_loss = loss(*train, hidden_train), loss(*val, hidden_val)
    g_w, g_alpha = jax.grad(train_loss, argnums=(0, 1))(w, alpha)
    lv, first_order = jax.value_and_grad(val_loss, argnums=1)(w, alpha)
    hidden_val_next = forward(w, alpha, stats, val[0], hidden_val).hidden
    a = hp.architect
    fd, aux = rs.architect_finite_difference(train_loss, val_loss, w, alpha, a)
    hidden_val_unrolled = forward(aux.w_prime, alpha, stats, val[0], hidden_val).hidden
    # eq. (7) with the exact mixed second derivative (r -> 0), the architect's quirks kept
    fd_limit = hg.tree_axpy(-a.eta * aux.clip_coef,
                            hg.mixed_hvp(train_loss, w, alpha, rs.clip_tree(aux.v, a.clip)),
                            aux.direct)
    inner = rs.virtual_step(a)
    exact = hg.second_order(train_loss, val_loss, w, alpha, inner, inner.init(w))[0]
    unrolled = hg.unrolled(train_loss, val_loss, w, alpha, inner, inner.init(w))[0]
    textbook = rs.virtual_step(rs.ArchitectHParams.textbook(eta=a.eta,
                                                            weight_decay=a.weight_decay))
    exact_textbook = hg.second_order(train_loss, val_loss, w, alpha, textbook,
                                     textbook.init(w))[0]
    return dict(train_out=train_out, eval_out=eval_out, g_w=g_w, g_alpha=g_alpha, lv=lv,
                first_order=first_order, hidden_val_next=hidden_val_next, fd=fd, aux=aux,
                hidden_val_unrolled=hidden_val_unrolled, fd_limit=fd_limit, exact=exact,
                unrolled=unrolled, exact_textbook=exact_textbook)
  return run


@functools.lru_cache(maxsize=8)
def _step_program(primitives: tuple[str, ...], hp: rs.RecurrentSearchHParams):
  forward = rs.search_network(primitives, nodes='scan')
  return jax.jit(lambda state, train, val: rs.search_step(hp, forward, state, train, val,
                                                          hp.architect.eta))


def _verify_search(ref: Mapping[str, np.ndarray], meta, report) -> None:
  m = meta['search']
  primitives = tuple(meta.get('primitives', rc.PRIMITIVES))
  w = _weights(ref, 'search/w/')
  alpha = {'recurrent': jnp.asarray(ref['search/alphas'])}
  stats = {'mean': jnp.asarray(ref['search/bn/running_mean']),
           'var': jnp.asarray(ref['search/bn/running_var'])}
  train = (jnp.asarray(ref['search/x_train']), jnp.asarray(ref['search/y_train']))
  val = (jnp.asarray(ref['search/x_val']), jnp.asarray(ref['search/y_val']))
  hidden_train = jnp.asarray(ref['search/hidden_train'][0])
  hidden_val = jnp.asarray(ref['search/hidden_val'][0])
  hp = search_hparams(m)
  r = _search_program(primitives, hp)(w, alpha, stats, train, hidden_train, val, hidden_val)
  alpha_of = lambda g: g['recurrent']  # noqa: E731
  checks = [
      ('logprob_train', r['train_out'].log_probs, 'logits'),
      ('loss_train', rc.nll(r['train_out'].log_probs, train[1]), 'loss'),
      ('hidden_train_next', r['train_out'].hidden[None], 'roundoff'),
      ('hiddens_train', r['train_out'].hiddens, 'roundoff'),
      ('bn_after_train/running_mean', r['train_out'].batch_stats['mean'], 'roundoff'),
      ('bn_after_train/running_var', r['train_out'].batch_stats['var'], 'roundoff'),
      ('logprob_eval', r['eval_out'].log_probs, 'logits'),
      ('grad_alphas_train', alpha_of(r['g_alpha']), 'roundoff'),
      ('loss_val', r['lv'], 'loss'),
      ('hypergrad_first_order', alpha_of(r['first_order']), 'roundoff'),
      ('hidden_val_next', r['hidden_val_next'][None], 'roundoff'),
      ('unrolled/clip_coef', r['aux'].clip_coef, 'roundoff'),
      ('unrolled/loss_val', r['aux'].val_loss, 'loss'),
      ('unrolled/grad_alphas_val', alpha_of(r['aux'].direct), 'roundoff'),
      ('unrolled/hvp_fd', alpha_of(r['aux'].hvp), 'finite_difference'),
      ('hypergrad_fd', alpha_of(r['fd']), 'finite_difference'),
      ('hidden_val_next_unrolled', r['hidden_val_unrolled'][None], 'roundoff'),
      ('hypergrad_fd_limit', alpha_of(r['fd_limit']), 'gradient'),
      ('hypergrad_exact', alpha_of(r['exact']), 'gradient'),
      ('hypergrad_exact_textbook', alpha_of(r['exact_textbook']), 'gradient')]
  for key, ours, kind in checks:
    if f'search/{key}' in ref:
      report.check(f'search/{key}', ours, ref[f'search/{key}'], kind)
  for key, ours in (('grad_w_train', r['g_w']), ('unrolled/w', r['aux'].w_prime),
                    ('unrolled/grad_w_val', r['aux'].v)):
    if _named(ref, f'search/{key}/'):
      _check_weights(report, f'search/{key}', ours, ref, f'search/{key}/', 'roundoff')
  if 'search/hypergrad_exact' in ref:
    # eq. 6 by the chain rule in pieces against jax.grad through the whole virtual step
    report.check('search/exact_vs_unrolled', alpha_of(r['exact']), alpha_of(r['unrolled']),
                 'same_math')
  if 'search/genotype' in ref:
    got = str(rc.derive_genotype(jax.device_get(alpha), primitives))
    report.count('search/genotype', 1, [] if got == str(ref['search/genotype']) else [got])
  if 'search/step/alphas' in ref:
    _verify_step(ref, primitives, hp, w, alpha, stats, train, val, hidden_train, hidden_val,
                 report)


def _verify_step(ref, primitives, hp, w, alpha, stats, train, val, hidden_train, hidden_val,
                 report) -> None:
  """One search step from a fresh Adam state: the architect's alpha step (its finite
  difference), then the weight step on NLL + TAR with the new alphas."""
  state = rs.RecurrentSearchState(w, alpha, stats, rs.alpha_optimizer(hp).init(alpha),
                                  hidden_train, hidden_val)
  new, metrics = _step_program(primitives, hp)(state, train, val)
  report.check('search/step/alphas', new.alphas['recurrent'], ref['search/step/alphas'],
               'full_step')
  for key, ours in (('loss_train', metrics.train_loss), ('loss_total', metrics.total_loss),
                    ('hidden_train_next', new.hidden_train[None])):
    if f'search/step/{key}' in ref:
      report.check(f'search/step/{key}', ours, ref[f'search/step/{key}'], 'full_step')
  if _named(ref, 'search/step/w/'):
    _check_weights(report, 'search/step/w', new.weights, ref, 'search/step/w/', 'full_step')


@functools.lru_cache(maxsize=8)
def _eval_program(genotype: rc.RecurrentGenotype):
  @jax.jit
  def run(w, tokens, targets, hidden):
    def loss(w_):
      out = rc.eval_forward(w_, genotype, tokens, hidden)
      return rc.nll(out.log_probs, targets), out
    (value, out), grad = jax.value_and_grad(loss, has_aux=True)(w)
    return value, out, rc.temporal_activation_regularization(out.hiddens), grad
  return run


def _verify_eval(ref: Mapping[str, np.ndarray], meta, report) -> None:
  m = meta['eval']
  genotype = rc.parse_genotype(m.get('genotype') or m['genotype_name'])
  if 'genotype' in m and 'genotype_name' in m and rc.parse_genotype(m['genotype_name']) != genotype:
    report.fail('eval/genotype', 'roundoff', f'meta names {m["genotype_name"]} but gives another')
  w = _weights(ref, 'eval/w/')
  loss, out, tar, grad = _eval_program(genotype)(
      w, jnp.asarray(ref['eval/x']), jnp.asarray(ref['eval/y']), jnp.asarray(ref['eval/hidden'][0]))
  for key, ours, kind in (('logprob', out.log_probs, 'logits'), ('loss', loss, 'loss'),
                          ('hidden_next', out.hidden[None], 'roundoff'),
                          ('hiddens', out.hiddens, 'roundoff'), ('tar', tar, 'loss')):
    if f'eval/{key}' in ref:
      report.check(f'eval/{key}', ours, ref[f'eval/{key}'], kind)
  if _named(ref, 'eval/grad_w/'):
    _check_weights(report, 'eval/grad_w', grad, ref, 'eval/grad_w/', 'roundoff')


def _verify_genotypes(ref, meta, report) -> None:
  """The genotype rule on every stored case: the string and the parsed pairs must both match."""
  primitives = tuple(meta.get('primitives', rc.PRIMITIVES))
  expected = meta.get('genotypes', [])
  mismatches = []
  for k, want in enumerate(expected):
    got = rc.derive_genotype({'recurrent': ref[f'genotype/{k}/alphas']}, primitives)
    if (str(got) != want['str'] or str(got) != str(ref[f'genotype/{k}/genotype'])
        or got != rc.RecurrentGenotype.from_dict(want)):
      mismatches.append(k)
  report.count('genotypes', len(expected), mismatches)


# every quantity of a recurrent reference file that it holds
verify = verify_sections(_verify_search, _verify_eval, _verify_genotypes)


REFERENCE = ReferenceFormat(name=NAME, detect=detect, verify=verify)
