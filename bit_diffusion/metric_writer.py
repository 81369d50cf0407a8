"""TensorBoard metrics, the training log and the progress line, without TensorFlow.

CLU's metric writers write through `tf.summary`, so importing them imports TensorFlow: 3.4 s and
520 MB more in every process on an idle 2-core EPYC (8 s under load), paid by every training,
every worker of a multi-process run and every test subprocess, though nothing else in training
needs TensorFlow. `MetricWriter` keeps CLU's interface (`write_scalars`, `write_images`,
`write_texts`, `write_hparams`, `flush`) and its log lines (`[step] name=value, ...`), and
writes the event files with the `tensorboard` package's record format, protos and plugin
metadata, through `etils.epath` (local disks, and gs:// as with TensorFlow's GFile).
(tensorboard's own EventFileWriter opens files with TensorFlow's GFile whenever TensorFlow is
installed, which imports it.)
`ProgressReport` is CLU's `ReportProgress`: steps/s, percentage, ETA and where the time went.
"""

import collections
import contextlib
import io
import itertools
import os
import socket
import time
from collections.abc import Mapping
from typing import Any
from typing import Optional

import numpy as np
from absl import logging
from etils import epath
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_file_numbers = itertools.count()  # Two writers of one process in one second: two files.


class MetricWriter:
  """Logs every value; writes them to TensorBoard event files in `logdir` unless it is None."""

  def __init__(self, logdir: Optional[str]):
    self._records = None
    if logdir is not None:
      directory = epath.Path(logdir)
      directory.mkdir(parents=True, exist_ok=True)
      name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
              f'{os.getpid()}.{next(_file_numbers)}')
      self._records = RecordWriter((directory / name).open('wb'))
      self._add_event(event_pb2.Event(file_version='brain.Event:2'))

  def _add_event(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    """One event, flushed at once: TensorBoard shows it while training runs on (writes come every
    `training.log_every` steps, so a flush each costs nothing), and a killed run loses none."""
    if self._records is not None:
      self._add_event(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))
      self._records.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Each value (a Python, NumPy or JAX scalar) under its name."""
    floats = {name: float(np.asarray(value)) for name, value in sorted(scalars.items())}
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in floats.items()))
    self._write(step, [summary_pb2.Summary.Value(tag=name, simple_value=value)
                       for name, value in floats.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Images as PNG: [N, H, W, C] or [H, W, C], C in {1, 3, 4}, uint8 or float in [0, 1]."""
    logging.info('[%d] Got images: %s.', step, {k: v.shape for k, v in images.items()})
    values = []
    for name, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      if batch.dtype != np.uint8:
        batch = np.round(np.clip(batch, 0.0, 1.0) * 255).astype(np.uint8)
      for i, image in enumerate(batch):
        png = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(png, 'PNG')
        height, width, channels = image.shape
        tag = name if len(batch) == 1 else f'{name}/image/{i}'
        values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png.getvalue())))
    self._write(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Markdown texts, shown in TensorBoard's text tab."""
    logging.info('[%d] Got texts: %s.', step, texts)
    self._write(step, [summary_pb2.Summary.Value(
        tag=name, metadata=text_metadata.create_summary_metadata(display_name=name,
                                                                 description=''),
        tensor=tensor_util.make_tensor_proto(text.encode(), dtype='string'))
        for name, text in texts.items()])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's settings (flat: bool, int, float or str values), in TensorBoard's HParams tab."""
    logging.info('[Hyperparameters] %s', hparams)
    summary = hparams_summary.hparams_pb(dict(hparams))
    self._write(0, list(summary.value))

  def flush(self) -> None:
    if self._records is not None:
      self._records.flush()

  def close(self) -> None:
    if self._records is not None:
      self._records.close()
      self._records = None


def create_writer(workdir: str, just_logging: bool = False) -> MetricWriter:
  """The writer of a run: event files in `workdir`, or only the log (other processes)."""
  return MetricWriter(None if just_logging else workdir)


def format_seconds(seconds: float) -> str:
  """123456.7 -> '1d10h17m' (minutes always shown), as CLU's progress line."""
  days, rest = divmod(int(seconds), 86400)
  hours, rest = divmod(rest, 3600)
  return (f'{days}d' if days else '') + (f'{hours}h' if hours else '') + f'{rest // 60}m'


class ProgressReport:
  """Logs 'X steps/s, P% (step/num_steps), ETA: ... (total : x% checkpoint, y% sample)' every
  `every_seconds` and at the last step, and writes steps_per_sec and uptime to `writer`.

  `timed(name)` measures a part of the loop (its wall time, which includes finishing a step
  still running on the device); the line gives each part's share of the wall time.
  """

  def __init__(self, num_steps: int, writer: Optional[MetricWriter] = None,
               every_seconds: float = 60.0, clock=time.monotonic):
    self._num_steps = num_steps
    self._writer = writer
    self._every_seconds = every_seconds
    self._clock = clock
    self._start_time = clock()
    self._previous_step: Optional[int] = None
    self._previous_time = self._start_time
    self._seconds_per_part = collections.defaultdict(float)
    self.last_line = ''

  def __call__(self, step: int) -> None:
    now = self._clock()
    if self._previous_step is None:  # The first call only starts the clock (after compiling).
      self._previous_step, self._previous_time = step, now
      return
    due = now - self._previous_time >= self._every_seconds or step == self._num_steps
    if not due or step == self._previous_step:
      return
    steps_per_second = (step - self._previous_step) / max(now - self._previous_time, 1e-9)
    eta = (self._num_steps - step) / steps_per_second
    line = (f'{steps_per_second:.1f} steps/s, {100 * step / self._num_steps:.1f}% '
            f'({step}/{self._num_steps}), ETA: {format_seconds(eta)}')
    if self._seconds_per_part:
      total = now - self._start_time
      line += f' ({format_seconds(total)} : ' + ', '.join(
          f'{100 * seconds / total:.1f}% {name}'
          for name, seconds in sorted(self._seconds_per_part.items())) + ')'
    logging.info('%s', line)
    self.last_line = line
    if self._writer is not None:
      self._writer.write_scalars(step, {'steps_per_sec': steps_per_second,
                                        'uptime': now - self._start_time})
    self._previous_step, self._previous_time = step, now

  @contextlib.contextmanager
  def timed(self, name: str):
    """Adds the wall time of the block to part `name`."""
    start = self._clock()
    try:
      yield
    finally:
      self._seconds_per_part[name] += self._clock() - start
