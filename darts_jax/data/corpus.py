"""Word-level language-model corpora: Penn Treebank and WikiText-2 in their standard text
distributions, and an offline demo corpus.

As the original's ``rnn/data.py`` builds its corpus: every line of ``train.txt``, ``valid.txt``
and ``test.txt`` is split on whitespace and ended with ``<eos>``; words get ids in order of first
appearance, over the three files in that order (PTB's files already map rare words to ``<unk>``).
``batchify`` lays a split out as (steps, batch) columns, time-major, and ``get_batch`` cuts
(inputs, next-word targets) of ``seq_len`` steps from it.

The demo corpus needs nothing outside Python: the English text of ``pydoc_data.topics`` (the
help topics that ship with Python, 65,876 words), lower-cased, numbers as ``N``, one line per
non-empty text line, the vocabulary capped to the most frequent words with the rest ``<unk>``,
PTB-style.
"""

from __future__ import annotations

import collections
import os
import re
from typing import NamedTuple

import numpy as np

EOS, UNK = '<eos>', '<unk>'
SPLITS = ('train', 'valid', 'test')


class Corpus(NamedTuple):
  words: tuple[str, ...]  # id -> word
  train: np.ndarray  # int32 ids of the whole split, <eos> after every line
  valid: np.ndarray
  test: np.ndarray

  @property
  def ntoken(self) -> int:
    return len(self.words)


def corpus_from_lines(splits: dict[str, list[list[str]]]) -> Corpus:
  """Ids by first appearance over train, valid, test (the original's ``Corpus``)."""
  ids: dict[str, int] = {}
  out = {}
  for split in SPLITS:
    seq = []
    for words in splits[split]:
      for word in (*words, EOS):
        seq.append(ids.setdefault(word, len(ids)))
    out[split] = np.asarray(seq, np.int32)
  return Corpus(tuple(ids), out['train'], out['valid'], out['test'])


def read_corpus(directory: str) -> Corpus:
  """``train.txt``, ``valid.txt``, ``test.txt`` of ``directory`` (PTB's ``ptb.*.txt`` and
  WikiText-2's ``wiki.*.tokens`` names are taken too). A missing file is a one-line error
  naming the file to place."""
  splits = {}
  for split in SPLITS:
    names = (f'{split}.txt', f'ptb.{split}.txt', f'wiki.{split}.tokens')
    found = [os.path.join(directory, n) for n in names
             if os.path.isfile(os.path.join(directory, n))]
    if not found:
      raise FileNotFoundError(f'no {split} split in {directory!r}: place {names[0]} there (or '
                              f'{names[1]} / {names[2]}), one sentence a line')
    with open(found[0], encoding='utf-8') as f:
      splits[split] = [line.split() for line in f]
  return corpus_from_lines(splits)


def demo_corpus(vocab_size: int = 2000) -> Corpus:
  """The offline corpus (module docstring): lines split 80 / 10 / 10 % into train, valid, test
  in order; ``vocab_size`` counts ``<unk>`` and ``<eos>``."""
  if vocab_size < 3:
    raise ValueError(f'vocab_size={vocab_size!r}: must be >= 3 (<unk>, <eos> and a word)')
  import pydoc_data.topics as topics
  text = '\n'.join(topics.topics[k] for k in sorted(topics.topics))
  lines = [['N' if w[0].isdigit() else w for w in re.findall(r"[a-z]+(?:'[a-z]+)?|[0-9]+", line)]
           for line in text.lower().splitlines()]
  lines = [line for line in lines if line]
  counts = collections.Counter(w for line in lines for w in line)
  # the most frequent words; ties by the word itself, so the vocabulary never depends on order
  keep = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size - 2]}
  lines = [[w if w in keep else UNK for w in line] for line in lines]
  a, b = int(0.8 * len(lines)), int(0.9 * len(lines))
  return corpus_from_lines({'train': lines[:a], 'valid': lines[a:b], 'test': lines[b:]})


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """(steps, batch_size), time-major: column b is the b-th contiguous slice of the split (the
  tail that does not fill a column is dropped, as the original does)."""
  steps = len(ids) // batch_size
  if steps < 2:
    raise ValueError(f'batch_size={batch_size}: a split of {len(ids)} tokens gives columns of '
                     f'{steps} steps; at least 2 are needed (an input and its target)')
  return ids[:steps * batch_size].reshape(batch_size, steps).T


def get_batch(source: np.ndarray, i: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Inputs source[i : i + n] and targets source[i + 1 : i + 1 + n], n = min(seq_len,
  len(source) - 1 - i)."""
  n = min(seq_len, len(source) - 1 - i)
  return source[i:i + n], source[i + 1:i + 1 + n]
