"""The training step of a derived network (``darts_jax.train``): the published parameter count
of its state, the schedules against closed forms, the auxiliary loss in training only, and the
evaluation sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import optim
from darts_jax import train as T
from darts_jax.genotypes import DARTS_V2
from darts_jax.networks import NetworkCIFAR
from darts_jax.ops.init import num_params


def test_training_state_of_darts_v2_has_the_published_count():
  """The paper's evaluation network (auxiliary head included) has exactly the original's
  parameter count, and optimiser state for every weight."""
  state = T.init_train_state(T.TrainHParams(), NetworkCIFAR(36, 10, 20, True, 'DARTS_V2'),
                             jax.random.PRNGKey(0))
  assert num_params(state.weights) == 3_825_768
  assert num_params(state.opt_state) == 3_825_768 + 1  # a momentum per weight, the step count


def test_training_schedules_and_hparam_checks():
  hp = T.TrainHParams(epochs=600, steps_per_epoch=10)
  # the original sets drop_path_prob * epoch / epochs at each epoch's start
  assert float(T.drop_path_prob(hp, 0)) == 0.0
  assert abs(float(T.drop_path_prob(hp, 3009)) - 0.2 * 300 / 600) < 1e-7
  # cosine annealing per epoch, to 0 at the end (CosineAnnealingLR(epochs) stepped per epoch)
  lr = optim.cosine_per_epoch(hp.lr, hp.lr_min, hp.epochs, hp.steps_per_epoch)
  assert float(lr(9)) == pytest.approx(0.025)
  assert float(lr(3000)) == pytest.approx(0.0125, rel=1e-6)
  assert float(lr(5999)) == pytest.approx(0.0125 * (1 + np.cos(np.pi * 599 / 600)), rel=1e-4)
  with pytest.raises(ValueError, match=r'drop_path_prob=1.0: must be in \[0, 1\)'):
    T.TrainHParams(drop_path_prob=1.0)
  with pytest.raises(ValueError, match='epochs=0: must be an integer >= 1'):
    T.TrainHParams(epochs=0)


@pytest.mark.slow
def test_auxiliary_loss_only_in_training():
  model = NetworkCIFAR(2, 10, 3, True, DARTS_V2)
  hp = T.TrainHParams(epochs=4, steps_per_epoch=1)
  state = T.init_train_state(hp, model, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray([1, 2, 3, 4])
  variables = {'params': state.weights, 'batch_stats': state.batch_stats}
  # each program compiled whole (op-by-op dispatch of the network costs more than compiling)
  apply = jax.jit(model.apply, static_argnums=2, static_argnames='mutable')
  eval_step = jax.jit(T.eval_step, static_argnums=0)
  (logits, aux), _ = apply(variables, images, True, mutable=('batch_stats',))
  ce = lambda z: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(4), labels])
  loss, _ = jax.jit(T.make_train_loss(model, 0.4))(state.weights, state.batch_stats,
                                                   (images, labels), jax.random.PRNGKey(1), 0.0)
  assert float(loss) == pytest.approx(float(ce(logits) + 0.4 * ce(aux)), rel=1e-6)
  assert float(ce(aux)) > 0.1  # the head contributes
  sums = eval_step(model, state.weights, state.batch_stats, images, labels, jnp.ones(4))
  eval_logits, eval_aux = apply(variables, images, False)
  assert eval_aux is None
  assert float(sums['loss']) == pytest.approx(4 * float(ce(eval_logits)), rel=1e-6)
  # top-1 and top-5 hits by hand; a masked-out example counts nowhere
  ranks = (eval_logits > eval_logits[jnp.arange(4), labels][:, None]).sum(-1)
  masked = eval_step(model, state.weights, state.batch_stats, images, labels,
                     jnp.array([1.0, 1.0, 1.0, 0.0]))
  assert float(sums['top1']) == float(jnp.sum(ranks == 0))
  assert float(sums['top5']) == float(jnp.sum(ranks < 5))
  assert float(masked['examples']) == 3.0
  assert float(masked['top5']) == float(jnp.sum((ranks < 5)[:3]))
