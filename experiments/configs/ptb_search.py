"""Configuration of ``python -m experiments.ptb_search`` (the recurrent cell search).

  python -m experiments.ptb_search --config=experiments/configs/ptb_search.py:demo --workdir=/tmp/d

Presets: ``paper`` (the default: the paper's PTB search, ``rnn/train_search.py``), ``demo`` (a
real search offline, on the English help text that ships with Python: minutes on 2 CPU cores)
and ``tiny`` (a smoke test on a sliver of the demo corpus).
"""

import ml_collections

from darts_jax.recurrent import DropoutRates
from darts_jax.recurrent_search import ArchitectHParams, RecurrentSearchHParams
from experiments.configs.corpus import add_corpus_keys, add_output_keys, shrink_to_tiny

PRESETS = ('paper', 'tiny', 'demo')


def get_config(preset: str = 'paper') -> ml_collections.ConfigDict:
  preset = preset or 'paper'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {", ".join(PRESETS)}')
  # the paper's values are set once, in the library's NamedTuples; this file names the keys
  paper, architect, rates = RecurrentSearchHParams(), ArchitectHParams(), DropoutRates()
  c = ml_collections.ConfigDict()
  c.preset = preset
  add_corpus_keys(c)
  c.seed = 3
  c.dtype = 'float32'

  # network (emsize = nhid = nhidlast = 300, 8 nodes, the five recurrent ops)
  c.nhid = 300
  c.steps = 8
  c.primitives = ()  # () -> none, tanh, relu, sigmoid, identity
  c.dropout = rates.dropout
  c.dropouth = rates.dropouth
  c.dropoutx = rates.dropoutx
  c.dropouti = rates.dropouti
  c.dropoute = rates.dropoute

  # weights: SGD lr 20 (times seq_len / bptt), clip 0.25, weight decay 5e-7, TAR beta 1e-3
  c.epochs = 50
  c.batch_size = 256
  c.eval_batch_size = 10
  c.bptt = 35
  c.lr = architect.eta
  c.clip = architect.clip
  c.wdecay = architect.weight_decay
  c.beta = paper.tar_beta
  # alphas: Adam 3e-3, betas (0.9, 0.999), weight decay 1e-3, on the validation split
  c.arch_lr = paper.alpha_lr
  c.arch_b1 = paper.alpha_b1
  c.arch_b2 = paper.alpha_b2
  c.arch_wdecay = paper.alpha_weight_decay
  # hypergradient: exact (second order through the virtual step the search takes; the
  # default), first_order, finite_difference (the original's eq. 7, its quirks below), unrolled,
  # implicit
  c.estimator = 'exact'
  c.unrolled_steps = paper.unrolled_steps
  c.implicit_maxiter = paper.implicit_maxiter
  c.fd_r = architect.r
  # the original architect's virtual step and quirks (darts_jax.recurrent_search); all False
  # with clip on is the textbook formula on the clipped step
  c.virtual_clip = architect.virtual_clip
  c.clip_v = architect.clip_v
  c.eta_c_always = architect.eta_c_always
  c.freeze_tied_embedding = architect.freeze_tied_embedding

  add_output_keys(c, log_every=10, checkpoint_every=50)

  if preset == 'tiny':
    shrink_to_tiny(c)
    c.steps = 3
    c.epochs = 2
  elif preset == 'demo':
    c.dataset = 'demo'
    c.nhid = 64
    c.epochs = 5
    c.batch_size = 32
    # a 64-unit supernet: the paper's lr 20 and dropouts made the search diverge at epoch 4
    # (validation perplexity 364 -> 510); at lr 5 with lighter dropouts it improves every epoch
    c.lr = 5.0
    c.dropout = 0.3
    c.dropouth = 0.1
    c.dropoutx = 0.3
    c.dropouti = 0.1
    c.log_every = 5
    c.checkpoint_every = 20
  return c
