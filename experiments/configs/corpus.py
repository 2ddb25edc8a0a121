"""Config keys shared by the recurrent commands (``ptb_search.py``, ``ptb_train.py``)."""

import ml_collections


def add_corpus_keys(c: ml_collections.ConfigDict) -> None:
  """Where the words come from: ptb reads data_dir/ptb/ptb.{train,valid,test}.txt, wikitext2
  data_dir/wikitext-2/wiki.*.tokens (fetched when missing; data_dir '' -> $DARTS_JAX_DATA_DIR
  or ~/.cache/darts_jax); demo is Python's own help text, offline."""
  c.dataset = 'ptb'
  c.data_dir = ''
  c.download = True
  c.demo_vocab = 2000  # demo: the vocabulary, <unk> and <eos> included
  c.max_tokens = 0  # use only the first N tokens of each split (0: all)


def add_output_keys(c: ml_collections.ConfigDict, log_every: int, checkpoint_every: int) -> None:
  """What a run shows and keeps."""
  c.log_every = log_every
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = 2
  c.plots = True
  c.tensorboard = True
  c.progress = True


def shrink_to_tiny(c: ml_collections.ConfigDict) -> None:
  """The smoke-test sizes: 1,200 tokens of a 100-word demo corpus, 8 units, batch 8, BPTT 8."""
  c.dataset = 'demo'
  c.demo_vocab = 100
  c.max_tokens = 1200
  c.nhid = 8
  c.batch_size = 8
  c.eval_batch_size = 4
  c.bptt = 8
  c.log_every = 2
  c.checkpoint_every = 5
