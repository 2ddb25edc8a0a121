"""Word-level corpora: the original's Corpus on files in PTB's format, batchify / get_batch in
closed form, the offline demo corpus."""

import numpy as np
import pytest

from darts_jax.data import corpus


def _write(directory, names, texts):
  for name, text in zip(names, texts):
    (directory / name).write_text(text)


def test_read_corpus_numbers_words_as_the_original(tmp_path):
  # PTB's format: one sentence a line, rare words already <unk>, a leading space on each line
  _write(tmp_path, ['ptb.train.txt', 'ptb.valid.txt', 'ptb.test.txt'],
         [' the cat sat \n the <unk> ran \n', ' a cat \n', ' the dog \n'])
  c = corpus.read_corpus(str(tmp_path))
  assert c.words == ('the', 'cat', 'sat', '<eos>', '<unk>', 'ran', 'a', 'dog')
  np.testing.assert_array_equal(c.train, [0, 1, 2, 3, 0, 4, 5, 3])
  np.testing.assert_array_equal(c.valid, [6, 1, 3])
  np.testing.assert_array_equal(c.test, [0, 7, 3])
  assert c.ntoken == 8 and c.train.dtype == np.int32


def test_a_missing_split_names_the_file_to_place(tmp_path):
  _write(tmp_path, ['train.txt', 'valid.txt'], ['a b\n', 'a\n'])
  with pytest.raises(corpus.DataError, match="no test split in .*: place test.txt there "
                     r'\(or ptb.test.txt / wiki.test.tokens\)'):
    corpus.read_corpus(str(tmp_path))


def test_batchify_and_get_batch_in_closed_form():
  ids = np.arange(11)
  source = corpus.batchify(ids, 3)  # 3 columns of 3 steps; the 2 left over are dropped
  np.testing.assert_array_equal(source, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
  x, y = corpus.get_batch(source, 0, 2)
  np.testing.assert_array_equal(x, [[0, 3, 6], [1, 4, 7]])
  np.testing.assert_array_equal(y, [[1, 4, 7], [2, 5, 8]])
  x, y = corpus.get_batch(source, 1, 5)  # the last batch is shorter
  np.testing.assert_array_equal(x, [[1, 4, 7]])
  np.testing.assert_array_equal(y, [[2, 5, 8]])
  with pytest.raises(ValueError, match='batch_size=6: a split of 11 tokens gives columns of 1'):
    corpus.batchify(ids, 6)


def test_demo_corpus_is_pythons_help_text_ptb_style():
  c = corpus.demo_corpus(vocab_size=2000)
  assert c.ntoken == 2000 and '<unk>' in c.words and 'N' in c.words
  everything = np.concatenate([c.train, c.valid, c.test])
  eos = c.words.index('<eos>')
  # 65,876 words of pydoc_data.topics on 8,309 non-empty lines, one <eos> each
  assert np.sum(everything != eos) == 65876 and np.sum(everything == eos) == 8309
  assert len(c.train) > 5 * len(c.valid) > 0 and len(c.test) > 0
  assert all(w == w.lower() for w in c.words if w != 'N')
  again = corpus.demo_corpus(vocab_size=2000)  # deterministic
  assert again.words == c.words and np.array_equal(again.train, c.train)
  with pytest.raises(ValueError, match='vocab_size=2: must be >= 3'):
    corpus.demo_corpus(vocab_size=2)


def test_wikitext2_is_read_from_its_zip_and_ptb_from_its_files(tmp_path):
  """The distributions' real layouts, made small: wikitext-2-v1.zip holds
  wikitext-2/wiki.{train,valid,test}.tokens; PTB is ptb.{train,valid,test}.txt. Files already in
  place are not fetched again."""
  import zipfile
  text = {'train': ' = Valkyria = \n the game <unk> \n', 'valid': ' the game \n', 'test': ' = \n'}
  with zipfile.ZipFile(tmp_path / 'wikitext-2-v1.zip', 'w') as z:
    for split, body in text.items():
      z.writestr(f'wikitext-2/wiki.{split}.tokens', body)
  c = corpus.load_corpus('wikitext2', str(tmp_path))
  assert c.words[:5] == ('=', 'Valkyria', '<eos>', 'the', 'game')
  assert len(c.train) == 4 + 4 and len(c.valid) == 3 and len(c.test) == 2  # <eos> per line
  (tmp_path / 'ptb').mkdir()
  for split, body in text.items():
    (tmp_path / 'ptb' / f'ptb.{split}.txt').write_text(body)
  assert corpus.load_corpus('ptb', str(tmp_path)).words == c.words
