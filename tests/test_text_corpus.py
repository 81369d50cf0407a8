"""The text corpus layer: reading, character vocabularies, splits and windows."""

import numpy as np
import pytest

from bit_diffusion.text import corpus


def test_text8_normalisation_follows_text8s_rule():
  assert corpus.normalise_text8('Hello, World!  It\'s 1999.\nÉté') == 'hello world it s t '
  assert corpus.normalise_text8('abc') == 'abc'
  assert corpus.normalise_text8('') == ''


def test_text8_vocabulary_ids_and_round_trip():
  vocab = corpus.CharacterVocabulary('text8')
  assert (vocab.size, vocab.num_bits) == (27, 5)
  np.testing.assert_array_equal(vocab.encode('A b!z'), [1, 0, 2, 0, 26])
  assert vocab.decode(vocab.encode('The cat, the hat.')) == 'the cat the hat '


def test_byte_vocabulary_round_trips_any_text():
  vocab = corpus.CharacterVocabulary('bytes')
  assert (vocab.size, vocab.num_bits) == (256, 8)
  text = 'naïve café — 東京\n\ttab'
  ids = vocab.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text.encode('utf-8'))
  assert vocab.decode(ids) == text
  assert vocab.decode([0xE6, 0x9D]) == '\ufffd'  # A cut multi-byte character is shown, not fatal.


def test_decode_shows_ids_outside_the_vocabulary_as_replacement_characters():
  assert corpus.CharacterVocabulary('text8').decode([8, 27, 0, 31, 9]) == 'h\ufffd \ufffdi'
  assert corpus.CharacterVocabulary('bytes').decode([104, 300, 105]) == 'h\ufffdi'



def test_unknown_vocabulary_is_named():
  with pytest.raises(ValueError, match="Unknown character vocabulary 'chars'"):
    corpus.CharacterVocabulary('chars')


def test_text8_split_sizes():
  assert corpus.split_ranges(100_000_000, (0.9, 0.05, 0.05)) == [
      (0, 90_000_000), (90_000_000, 95_000_000), (95_000_000, 100_000_000)]
  assert corpus.split_ranges(10, (0.5, 0.25, 0.25)) == [(0, 5), (5, 8), (8, 10)]
  with pytest.raises(ValueError, match='sum to 1'):
    corpus.split_ranges(10, (0.5, 0.25))


def test_windows_are_consecutive_and_drop_the_remainder():
  tokens = np.arange(23)
  got = corpus.windows(tokens, 5)
  assert got.dtype == np.int32 and got.shape == (4, 5)
  np.testing.assert_array_equal(got.ravel(), np.arange(20))
  with pytest.raises(ValueError, match='3 tokens make no window of 5'):
    corpus.windows(np.arange(3), 5)


def test_reads_a_file_and_a_folder_in_sorted_order(tmp_path):
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'two.txt').write_text('second', encoding='utf-8')
  (tmp_path / 'a.txt').write_text('first é', encoding='utf-8')
  (tmp_path / 'notes.md').write_text('not read', encoding='utf-8')
  assert corpus.read_corpus(str(tmp_path / 'a.txt')) == 'first é'
  assert corpus.read_corpus(str(tmp_path)) == 'first é\nsecond'


def test_bad_corpora_get_clear_errors(tmp_path):
  latin1 = tmp_path / 'latin1.txt'
  latin1.write_bytes('café'.encode('latin-1'))
  with pytest.raises(ValueError, match=r'latin1.txt is not UTF-8 text: byte 3 is 0xe9.*iconv'):
    corpus.read_corpus(str(latin1))
  with pytest.raises(FileNotFoundError, match='not found'):
    corpus.read_corpus(str(tmp_path / 'missing.txt'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='No .txt files under the folder'):
    corpus.read_corpus(str(tmp_path / 'empty'))


def test_embedded_corpus_is_the_public_domain_asv_text():
  text = corpus.embedded_corpus()
  assert len(text) == 4_150_340
  assert text.startswith('\nIn the beginning God created the heavens and the earth.')
  vocab = corpus.CharacterVocabulary('text8')
  ids = vocab.encode(text)
  assert ids.min() >= 0 and ids.max() == 26  # Every character maps into text8's alphabet.
  assert corpus.CharacterVocabulary('bytes').decode(
      corpus.CharacterVocabulary('bytes').encode(text)) == text
