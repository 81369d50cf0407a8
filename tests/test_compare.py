"""tools/compare.py: the training rate read from a log, and the tables from eval results."""

import pytest

from tools import compare

LOG = """I1203 04:20:00.000000 1 main.py:79] JAX process 0/1
I1203 04:20:30.000000 1 metric_writer.py:67] [1] train/loss=1.0
I1203 04:20:40.500000 1 metric_writer.py:67] [10] train/loss=0.9, train/grad_norm=1
I1203 04:20:45.000000 1 metric_writer.py:67] [20] steps_per_sec=2.2
I1203 04:20:45.500000 1 metric_writer.py:67] [20] train/loss=0.8
I1203 04:21:05.500000 1 metric_writer.py:67] [60] train/loss=0.7
"""


def test_rate_is_read_between_step_10_and_the_last_step():
  assert compare.step_times(LOG).keys() == {1, 10, 20, 60}
  assert compare.steps_per_second(LOG) == pytest.approx(50 / 25.0)  # 04:20:40.5 -> 04:21:05.5.


def test_rate_of_a_log_without_metric_lines_is_an_error():
  with pytest.raises(ValueError, match='no train/ metric lines at step 10'):
    compare.steps_per_second(LOG.replace('[10] train/', '[10] eval/'))


def _text_eval(gen_ppl, seconds, infill):
  rows = [{'setting': 'held-out text (floor)', 'gen_ppl': 3.5, 'bigram_tv': 0.036,
           'seconds': 0.0},
          {'setting': 'unigram sampler (ceiling)', 'gen_ppl': 114.0, 'bigram_tv': 0.429,
           'seconds': 0.0},
          {'setting': 'ddim100_td0', 'gen_ppl': gen_ppl, 'bigram_tv': 0.2, 'seconds': seconds}]
  return {'num_samples': 512, 'rows': rows,
          'infill': [{'span': s, 'model': a} for s, a in zip((1, 4), infill)]}


def test_text_table_has_the_references_and_one_row_per_setting():
  records = {'Bit Diffusion': {'num_steps': 2300, 'train_seconds': 1800.0,
                               'eval': _text_eval(50.0, 51.2, (0.391, 0.163))},
             'GGM': {'num_steps': 3800, 'train_seconds': 1746.0,
                     'eval': _text_eval(113.3, 131.6, (0.102, 0.068))}}
  lines = compare.text_table(records).splitlines()
  assert 'infilling (spans 1 / 4)' in lines[0]
  assert lines[2] == '| held-out text (floor) | | | | 3.5 | 0.036 | | |'
  assert lines[3] == '| unigram sampler (ceiling) | | | | 114.0 | 0.429 | | |'
  assert lines[4] == ('| Bit Diffusion | ddim100_td0 | 2300 | 30.0 | 50.0 | 0.200 | '
                      '39.1% / 16.3% | 100 |')
  assert lines[5] == '| GGM | ddim100_td0 | 3800 | 29.1 | 113.3 | 0.200 | 10.2% / 6.8% | 257 |'


def test_digits_table_has_the_real_data_floor():
  ev = {'eval/seconds': 9.0, 'eval/num_samples': 900, 'eval/fid': 1.234, 'eval/precision': 0.8,
        'eval/recall': 0.7, 'eval/fid_floor': 0.5, 'eval/precision_floor': 0.9,
        'eval/recall_floor': 0.85}
  lines = compare.digits_table({'GGM': {'num_steps': 10, 'train_seconds': 60.0, 'eval': ev}})
  assert lines.splitlines()[2:] == ['| GGM | 10 | 1.0 | 1.23 | 0.800 | 0.700 | 10 |',
                                    '| real data (floor) | | | 0.50 | 0.900 | 0.850 | |']


def test_overrides_apply_to_every_config_or_to_the_one_named():
  given = ['eval.num_samples=8', 'text:eval.sweep_td=(0.,)', 'text_ar:training.num_steps=5',
           'data.path=/a:b']
  assert compare.overrides_for('text', given) == [
      'eval.num_samples=8', 'eval.sweep_td=(0.,)', 'data.path=/a:b']
  assert compare.overrides_for('text_ggm', given) == ['eval.num_samples=8', 'data.path=/a:b']
