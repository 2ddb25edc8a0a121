"""Configuration of ``python -m experiments.ptb_train`` (training a recurrent cell).

  python -m experiments.ptb_train --config=experiments/configs/ptb_train.py:demo --workdir=/tmp/t
  python -m experiments.ptb_train --config.genotype=runs/ptb_search/genotype.txt --workdir=...

Presets: ``paper`` (the default: DARTS_V2 on PTB, ``rnn/train.py``; WikiText-2 with
``--config.dataset=wikitext2``), ``demo`` (offline, on Python's help text: minutes on 2 CPU
cores) and ``tiny`` (a smoke test).
"""

import ml_collections

from darts_jax.recurrent import DropoutRates
from experiments.configs.corpus import add_corpus_keys, add_output_keys, shrink_to_tiny

PRESETS = ('paper', 'tiny', 'demo')


def get_config(preset: str = 'paper') -> ml_collections.ConfigDict:
  preset = preset or 'paper'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {", ".join(PRESETS)}')
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.genotype = 'DARTS_V2'  # a name, a genotype file (a search's genotype.txt) or the string
  add_corpus_keys(c)
  c.seed = 1267
  c.dtype = 'float32'

  # network: emsize = nhid = 850, the five dropouts (embedding rows 0.1 here)
  c.nhid = 850
  c.dropout = 0.75
  c.dropouth = 0.25
  c.dropoutx = 0.75
  c.dropouti = 0.2
  c.dropoute = 0.1
  assert set(DropoutRates._fields) <= set(c.keys())

  # optimisation: SGD lr 20 (times seq_len / bptt), clip 0.25, weight decay 8e-7, TAR 1e-3,
  # NT-ASGD after `nonmono` non-improving evaluations; windows N(35, 5) (17.5 with p = 0.05),
  # at most 35 + 20 steps
  c.epochs = 8000
  c.batch_size = 64
  c.eval_batch_size = 10
  c.test_batch_size = 1
  c.bptt = 35
  c.max_seq_len_delta = 20
  c.lr = 20.0
  c.clip = 0.25
  c.wdecay = 8e-7
  c.alpha = 0.0  # activation regularisation
  c.beta = 1e-3  # temporal activation regularisation
  c.nonmono = 5

  add_output_keys(c, log_every=10, checkpoint_every=200)

  if preset == 'tiny':
    shrink_to_tiny(c)
    c.epochs = 3
    c.max_seq_len_delta = 4
    c.nonmono = 1
  elif preset == 'demo':
    c.dataset = 'demo'
    c.nhid = 128
    c.epochs = 25
    c.batch_size = 32
    c.nonmono = 2
    c.checkpoint_every = 50
  return c
