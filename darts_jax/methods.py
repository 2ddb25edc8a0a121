"""Search methods: the DARTS family as transformations of a search space.

A method has two seams. ``configure`` rewrites the run config from which the space is built:
PC-DARTS turns on partial channels and edge normalisation, which change the supernet itself (its
architecture pytree gains the edge betas beside the alphas; the estimators then differentiate
both, and the genotype rule weighs edges by them); DARTS- adds the auxiliary skip. ``transform``
maps the built :class:`~darts_jax.spaces.SearchSpace` to another one: it replaces the space's
mixing rule (GDAS's one-hot Gumbel sample, DrNAS's Dirichlet sample, DARTS-'s decaying skip
coefficient), the weight step's loss (SDARTS's perturbed mixing weights) or the genotype rule.
The search step, the estimators and the run loop see only the resulting space, so every method
works with every estimator, on the device mesh and with resume.

A method whose loss depends on the step gives the space a ``make_step_loss``: the search step
binds it to the step's :class:`~darts_jax.spaces.StepContext`, whose key is drawn from the
step's number (``search.step_context``). One sample serves the whole step, so every estimator
differentiates the sampled objective with the sample held fixed, and a resumed search draws the
same samples.

DARTS itself changes nothing. A new method is a :class:`Method` here and one entry in
:data:`METHODS`; the mathematics of its rule goes in ``darts_jax.variants``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from darts_jax import losses, variants
from darts_jax.spaces import SearchSpace, StepContext, StepLoss


class Method(NamedTuple):
  """One member of the DARTS family (see the module docstring)."""
  name: str
  summary: str  # one line for the log and the README's table
  configure: Callable[[Mapping[str, Any]], dict]  # run config -> the config the space is built from
  # (the built space, that config) -> the space searched
  transform: Callable[[SearchSpace, Mapping[str, Any]], SearchSpace]


def _unchanged(space, cfg):
  del cfg
  return space


DARTS = Method('darts', 'DARTS (Liu et al., 2019): softmax(alpha)-mixed ops on every edge, eq. 2',
               lambda cfg: _plain(cfg), _unchanged)


def _pc_darts_config(cfg: Mapping[str, Any]) -> dict:
  # PC-DARTS eq. 2 with K = cfg['partial_channels'] (the paper's 4), and its eq. 4: the edge
  # betas, always on with it
  return {**cfg, 'partial_channels': cfg.get('partial_channels', 4), 'edge_normalization': True}


PC_DARTS = Method('pc_darts', 'PC-DARTS (Xu et al., 2020): 1/K of the channels through each '
                  'mixed op, channel shuffle, softmax(beta) edge normalisation',
                  _pc_darts_config, _unchanged)


def _plain(cfg: Mapping[str, Any], **changes) -> dict:
  return {**cfg, 'partial_channels': 1, 'edge_normalization': False, **changes}


def _mixing_seam(space: SearchSpace, method: str) -> tuple[Callable, Callable]:
  """The space's network as a function of its mixing weights, and its own mixing rule."""
  if space.make_mixing_loss is None or space.architecture_mixing is None:
    raise ValueError(f'method={method!r} replaces the mixing weights; the space {space.name!r} '
                     f'does not take them as an argument (SearchSpace.make_mixing_loss)')
  return space.make_mixing_loss, space.architecture_mixing


def _with_rule(space: SearchSpace, method: str, rule: Callable[[Any, Any, StepContext], Any],
               penalty: Callable[[Any], Any] | None = None) -> SearchSpace:
  """``space`` whose loss mixes by ``rule(architecture, the space's own mixing, context)``, plus
  ``penalty(architecture)`` when given; the space's plain ``make_loss`` becomes the method's
  deterministic network (no draw, first epoch)."""
  make_mixing_loss, own_mixing = _mixing_seam(space, method)

  def make_step_loss(train=True, compute_dtype=None):
    mixing_loss = make_mixing_loss(train, compute_dtype)

    def at(context: StepContext) -> StepLoss:
      def loss(weights, architecture, batch_stats, batch):
        mixing = rule(architecture, own_mixing(
            architecture, losses.computed_in(compute_dtype, batch[0])), context)
        value, aux = mixing_loss(weights, mixing, batch_stats, batch)
        if penalty is None:
          return value, aux
        return value + penalty(architecture).astype(value.dtype), aux
      return StepLoss(loss)
    return at

  def make_loss(train=True, compute_dtype=None):
    return make_step_loss(train, compute_dtype)(StepContext(None, 0, 1)).loss

  return space._replace(make_loss=make_loss, make_step_loss=make_step_loss)


def _per_kind(mixing, ops: Callable[[str, Any], Any]):
  """``mixing`` with each cell kind's ops replaced by ``ops(kind, that kind's mixing)``."""
  return {kind: m._replace(ops=ops(kind, m)) for kind, m in mixing.items()}


def _kind_key(key, kind: str, kinds):
  """A cell kind's own draws: the key folded with the kind's place among ``kinds`` sorted
  (DARTS: normal 0, reduce 1; NAS-Bench-201's one cell: 0)."""
  return jax.random.fold_in(key, sorted(kinds).index(kind))


# GDAS ------------------------------------------------------------------------------------------

def _gdas(space: SearchSpace, cfg: Mapping[str, Any]) -> SearchSpace:
  tau_max, tau_min = float(cfg['gdas_tau_max']), float(cfg['gdas_tau_min'])
  if not tau_max >= tau_min > 0:
    raise ValueError(f'gdas_tau_max={tau_max!r}, gdas_tau_min={tau_min!r}: need tau_max >= '
                     f'tau_min > 0')

  def rule(alphas, mixing, context):
    def one_hot(kind, m):
      alpha = alphas[kind].astype(m.ops.dtype)
      if context.key is None:  # no draw: the argmax network
        return jax.nn.one_hot(jnp.argmax(alpha, -1), alpha.shape[-1], dtype=alpha.dtype)
      gumbel = jax.random.gumbel(_kind_key(context.key, kind, mixing), alpha.shape, alpha.dtype)
      tau = variants.gdas_tau(context.epoch, context.epochs, tau_max, tau_min)
      return variants.gumbel_one_hot(alpha, gumbel, jnp.asarray(tau, alpha.dtype))
    return _per_kind(mixing, one_hot)

  # GDAS's genotype: in the DARTS space its own rule (space.one_hot_genotype)
  return _with_rule(space, 'gdas', rule)._replace(
      genotype=space.one_hot_genotype or space.genotype)


GDAS = Method('gdas', 'GDAS (Dong & Yang, 2019): one op per edge sampled by Gumbel-softmax, '
              'one-hot forward, straight-through gradient, tau 10 -> 0.1', _plain, _gdas)


# DrNAS -----------------------------------------------------------------------------------------

def _drnas_config(cfg: Mapping[str, Any]) -> dict:
  # DrNAS's DARTS space runs partial channels (its K: 6, then 4) without PC-DARTS's betas
  return _plain(cfg, partial_channels=cfg.get('partial_channels', 1))


def _drnas(space: SearchSpace, cfg: Mapping[str, Any]) -> SearchSpace:
  kl_scale = float(cfg['drnas_kl_scale'])
  if not kl_scale >= 0:
    raise ValueError(f'drnas_kl_scale={kl_scale!r}: must be >= 0')

  def rule(alphas, mixing, context):
    def sample(kind, m):
      c = variants.dirichlet_concentration(alphas[kind].astype(m.ops.dtype))
      if context.key is None:  # no draw: the concentration's mean
        return c / jnp.sum(c, -1, keepdims=True)
      # reparameterised (jax.random.dirichlet differentiates its gamma draws implicitly)
      return jax.random.dirichlet(_kind_key(context.key, kind, mixing), c, dtype=c.dtype)
    return _per_kind(mixing, sample)

  def kl(alphas):  # DrNAS's regulariser: sum over edges of KL(Dir(c) || Dir(1)). Added to
    # both halves' loss: it does not depend on w, so the weight gradient and every estimator's
    # second-order term are those of the data loss alone
    return kl_scale * sum(jnp.sum(variants.dirichlet_kl(variants.dirichlet_concentration(a)))
                          for a in jax.tree_util.tree_leaves(alphas))

  def log_concentration(alphas):  # softmax(log c) = c / sum(c), the Dirichlet's mean
    return jax.device_get({k: jnp.log(variants.dirichlet_concentration(jnp.asarray(v)))
                           for k, v in alphas.items()})

  return _with_rule(space, 'drnas', rule, kl)._replace(
      # the genotype rule and the logs read the concentration's mean instead of softmax(alpha)
      genotype=lambda alphas: space.genotype(log_concentration(alphas)),
      mixing=lambda alphas: space.mixing(log_concentration(alphas)))


DRNAS = Method('drnas', 'DrNAS (Chen et al., 2021): Dirichlet(elu(alpha) + 1) samples as mixing '
               'weights, KL to Dir(1), genotype from the mean; partial channels', _drnas_config,
               _drnas)


# SDARTS ----------------------------------------------------------------------------------------

def _sdarts(adversarial: bool):
  name = 'sdarts_adv' if adversarial else 'sdarts_rs'

  def transform(space: SearchSpace, cfg: Mapping[str, Any]) -> SearchSpace:
    epsilon, steps = float(cfg['sdarts_epsilon']), cfg['sdarts_pgd_steps']
    if not epsilon > 0.03:
      raise ValueError(f'sdarts_epsilon={epsilon!r}: must exceed the schedule\'s start 0.03')
    if not isinstance(steps, int) or steps < 1:
      raise ValueError(f'sdarts_pgd_steps={steps!r}: must be an integer >= 1')
    make_mixing_loss, own_mixing = _mixing_seam(space, name)

    def make_step_loss(train=True, compute_dtype=None):
      mixing_loss = make_mixing_loss(train, compute_dtype)
      eval_loss = make_mixing_loss(False, compute_dtype)  # the attack's: running statistics
      plain = space.make_loss(train, compute_dtype)

      def at(context: StepContext) -> StepLoss:
        if context.key is None:
          return StepLoss(plain)
        eps = variants.sdarts_epsilon(context.epoch, context.epochs, epsilon)

        def weight_loss(weights, alphas, batch_stats, batch):
          mixing = own_mixing(alphas, losses.computed_in(compute_dtype, batch[0]))
          ops = jax.lax.stop_gradient({k: m.ops for k, m in mixing.items()})
          if adversarial:
            frozen = jax.lax.stop_gradient(weights)
            attack = lambda o: eval_loss(  # noqa: E731
                frozen, _per_kind(mixing, lambda k, m: o[k]), batch_stats, batch)[0]
            ops = variants.pgd_perturbation(attack, context.key, ops, eps, steps)
          else:
            ops = {k: variants.random_perturbation(_kind_key(context.key, k, ops), o, eps)
                   for k, o in ops.items()}
          return mixing_loss(weights, _per_kind(mixing, lambda k, m: ops[k]), batch_stats, batch)
        return StepLoss(plain, weight_loss)
      return at

    return space._replace(make_step_loss=make_step_loss)

  return transform


SDARTS_RS = Method('sdarts_rs', 'SDARTS-RS (Chen & Hsieh, 2020): the weight step at mixing '
                   'weights perturbed by U(-eps, eps), eps 0.03 -> 0.3', _plain, _sdarts(False))
SDARTS_ADV = Method('sdarts_adv', 'SDARTS-ADV (Chen & Hsieh, 2020): the weight step at mixing '
                    'weights perturbed by 7 PGD steps within eps, eps 0.03 -> 0.3', _plain,
                    _sdarts(True))


# DARTS- ----------------------------------------------------------------------------------------

def _darts_minus(space: SearchSpace, cfg: Mapping[str, Any]) -> SearchSpace:
  beta0 = float(cfg['darts_minus_beta'])
  if not beta0 >= 0:
    raise ValueError(f'darts_minus_beta={beta0!r}: must be >= 0')

  def rule(alphas, mixing, context):
    del alphas
    beta = variants.darts_minus_beta(context.epoch, context.epochs, beta0)
    return {k: m._replace(skip_beta=jnp.asarray(beta, m.ops.dtype)) for k, m in mixing.items()}

  return _with_rule(space, 'darts_minus', rule)


DARTS_MINUS = Method('darts_minus', 'DARTS- (Chu et al., 2021): an auxiliary skip connection '
                     'beta * skip(x) on every edge, beta decayed linearly from 1 to 0',
                     lambda cfg: _plain(cfg, auxiliary_skip=True), _darts_minus)

METHODS: Mapping[str, Method] = {m.name: m for m in (DARTS, PC_DARTS, GDAS, DRNAS, SDARTS_RS,
                                                     SDARTS_ADV, DARTS_MINUS)}


def get(name: str) -> Method:
  """The method ``name``; a one-line ValueError naming the allowed ones otherwise."""
  if name not in METHODS:
    raise ValueError(f'method={name!r} is unknown; allowed: {", ".join(METHODS)}')
  return METHODS[name]


def build(name: str, cfg: Mapping[str, Any], space_from_run: Callable[..., SearchSpace],
          *args) -> SearchSpace:
  """The space the method ``name`` searches: ``space_from_run(configure(cfg), *args)``,
  transformed."""
  method = get(name)
  configured = method.configure(cfg)
  return method.transform(space_from_run(configured, *args), configured)
