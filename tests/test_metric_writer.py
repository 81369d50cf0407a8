"""The TensorFlow-free metric writer: what TensorBoard reads back, the log lines, the progress
line, and that training imports no TensorFlow."""

import io
import logging
import subprocess
import sys

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from bit_diffusion import metric_writer
from tests import subprocesses


def _read_back(logdir):
  events = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={'scalars': 0, 'images': 0, 'tensors': 0})
  events.Reload()
  return events


def test_tensorboard_reads_back_what_was_written(tmp_path):
  writer = metric_writer.create_writer(str(tmp_path))
  writer.write_hparams({'optimizer.learning_rate': 2e-3, 'model.name': 'unet', 'seed': 3})
  writer.write_scalars(5, {'train/loss': np.float32(0.25), 'train/bit_error': 0.125})
  writer.write_scalars(10, {'train/loss': 0.5})
  grid = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1) * 40
  writer.write_images(10, {'samples': grid[None]})
  writer.write_images(10, {'rgb': np.full((4, 5, 3), 0.5, np.float32)})
  writer.write_texts(10, {'captions': 'a red square  \na blue circle'})
  events = _read_back(tmp_path)  # Before close: each write is flushed, as TensorBoard reads live.
  writer.close()

  assert [(s.step, s.value) for s in events.Scalars('train/loss')] == [(5, 0.25), (10, 0.5)]
  assert [(s.step, s.value) for s in events.Scalars('train/bit_error')] == [(5, 0.125)]
  image, = events.Images('samples')
  assert (image.step, image.width, image.height) == (10, 3, 2)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))),
                                grid[..., 0])
  rgb, = events.Images('rgb')
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rgb.encoded_image_string))),
                                np.full((4, 5, 3), 128, np.uint8))  # round(0.5 * 255).
  text, = events.Tensors('captions')
  assert text.step == 10 and text.tensor_proto.string_val == [b'a red square  \na blue circle']
  hparams_content = events.SummaryMetadata('_hparams_/session_start_info').plugin_data.content
  session = plugin_data_pb2.HParamsPluginData.FromString(hparams_content).session_start_info
  assert session.hparams['optimizer.learning_rate'].number_value == 2e-3
  assert session.hparams['model.name'].string_value == 'unet'
  assert session.hparams['seed'].number_value == 3


def test_just_logging_writes_no_files_and_logs_clu_style_lines(tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger='absl'):
    writer = metric_writer.create_writer(str(tmp_path), just_logging=True)
    writer.write_scalars(7, {'train/loss': 0.123456789, 'a': 2})
    writer.close()
  # CLU's format, which tests/test_preemption.py reads.
  assert [r.getMessage() for r in caplog.records] == ['[7] a=2, train/loss=0.123457']
  assert not list(tmp_path.iterdir())


class _Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_line_gives_speed_eta_and_where_the_time_went(tmp_path):
  clock = _Clock()
  writer = metric_writer.create_writer(str(tmp_path))
  progress = metric_writer.ProgressReport(1000, writer, every_seconds=60, clock=clock)
  clock.now = 130.0
  progress(1)  # After the first step (the compile): starts the clock, reports nothing.
  assert progress.last_line == ''
  clock.now = 180.0
  progress(101)  # 50 s < 60 s since the clock started: not due.
  assert progress.last_line == ''
  with progress.timed('checkpoint'):
    clock.now = 190.0
  clock.now = 230.0
  progress(201)  # 200 steps in 100 s; 799 left: 6.7 min; 13 min since the start.
  assert progress.last_line == (
      '2.0 steps/s, 20.1% (201/1000), ETA: 6m (2m : 7.7% checkpoint)')
  clock.now = 231.0
  progress(1000)  # The last step is always reported.
  assert progress.last_line.startswith('799.0 steps/s, 100.0% (1000/1000), ETA: 0m')
  writer.close()
  events = _read_back(tmp_path)
  assert [(s.step, s.value) for s in events.Scalars('steps_per_sec')] == [(201, 2.0),
                                                                         (1000, 799.0)]
  assert [s.value for s in events.Scalars('uptime')] == [130.0, 131.0]


def test_format_seconds():
  assert metric_writer.format_seconds(123456.7) == '1d10h17m'
  assert metric_writer.format_seconds(59) == '0m'
  assert metric_writer.format_seconds(3600) == '1h0m'


def test_training_evaluation_and_writing_import_no_tensorflow(tmp_path):
  code = ('import sys, numpy as np, main; from bit_diffusion import train_loop, evaluate; '
          'from bit_diffusion.captioning import evaluate as e; '
          'from bit_diffusion import metric_writer; '
          f'w = metric_writer.create_writer({str(tmp_path)!r}); w.write_scalars(1, {{"a": 1.0}}); '
          'w.write_images(1, {"b": np.zeros((2, 2, 1), np.uint8)}); w.write_texts(1, {"c": "d"}); '
          'w.write_hparams({"e": 1}); w.close(); '
          'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))')
  result = subprocess.run([sys.executable, '-c', code], cwd=subprocesses.REPO,
                          env=subprocesses.env(), capture_output=True, text=True, check=True)
  assert result.stdout.strip() == '[]'
  assert len(list(tmp_path.iterdir())) == 1  # The event file.
