"""Resumable, host-sharded batches from any random-access source (every task's training data).

A source gives random access to the examples of a dataset (`get(indices) -> dict of arrays`);
`BatchIterator` turns it into an infinite stream of batches whose content is a pure function of
(seed, step, process), so a resumed run sees exactly the batches an uninterrupted run would have
seen:

  stream = perm(seed, 0) ++ perm(seed, 1) ++ ...   (epoch e: a permutation of all N indices)
  global batch s = stream[s * B : (s + 1) * B]      (batches may straddle epochs)
  process p of P takes the p-th contiguous slice of B // P examples of each global batch.
"""

import functools
import queue
import threading
from typing import Protocol

import numpy as np


class Source(Protocol):
  """Random access to a dataset's examples."""

  def __len__(self) -> int:
    ...

  def get(self, indices: np.ndarray) -> dict:
    """The examples at `indices`; image sources: images int [n, H, W, C], labels int32 [n]."""
    ...


class BatchIterator:
  """Iterates over batch_at(start_step), batch_at(start_step + 1), ... prepared ahead.

  `batch_at` gives image batches ({'images', 'labels'}, flipped at random when asked); other
  tasks' iterators (captioning/data.py) override it and keep the order and the prefetching.
  """

  def __init__(self, source: Source, *, global_batch_size: int, seed: int, random_flip: bool,
               start_step: int = 0, process_index: int = 0, process_count: int = 1,
               prefetch: int = 2):
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(f'The global batch size {global_batch_size} must be a positive multiple '
                       f'of the number of processes ({process_count}).')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
    if seed < 0 or start_step < 0:
      raise ValueError(f'seed ({seed}) and start_step ({start_step}) must be >= 0.')
    self.source, self.seed, self.random_flip = source, seed, random_flip
    self.global_batch_size, self.num_examples = global_batch_size, len(source)
    self.local_batch_size = global_batch_size // process_count
    self.offset = process_index * self.local_batch_size  # This process's slice of the batch.
    self.step = start_step  # The step of the batch the next `__next__` returns.
    self.prefetch = prefetch
    self._permutation = functools.lru_cache(maxsize=4)(self._make_permutation)
    self._queue, self._thread, self._stop = None, None, threading.Event()

  def _make_permutation(self, epoch: int) -> np.ndarray:
    """Returns epoch's order of all example indices, int [num_examples]."""
    return np.random.default_rng([self.seed, 0, epoch]).permutation(self.num_examples)

  def indices_at(self, step: int) -> np.ndarray:
    """Returns the example indices of this process's slice of global batch `step`, int [b]."""
    start = step * self.global_batch_size + self.offset
    positions = np.arange(start, start + self.local_batch_size)  # In the stream of epochs.
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      indices[mask] = self._permutation(int(epoch))[offsets[mask]]
    return indices

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """Returns images int32 [b, H, W, C] and labels int32 [b], b = global batch // processes."""
    batch = self.source.get(self.indices_at(step))
    images = batch['images'].astype(np.int32)
    if self.random_flip:  # One draw per position in the global batch, whatever the processes.
      flips = np.random.default_rng([self.seed, 1, step]).random(self.global_batch_size) < 0.5
      flips = flips[self.offset:self.offset + self.local_batch_size]
      images[flips] = images[flips, :, ::-1]
    return {'images': images, 'labels': np.asarray(batch['labels'], np.int32)}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._stop.is_set():
      raise RuntimeError('This BatchIterator is closed.')
    if self.prefetch <= 0:
      batch = self.batch_at(self.step)
    else:
      if self._thread is None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._prepare, args=(self.step,), daemon=True)
        self._thread.start()
      step, batch, error = self._queue.get()
      if error is not None:
        self.close()  # The thread has stopped: later calls raise instead of waiting forever.
        raise error
      assert step == self.step, (step, self.step)
    self.step += 1
    return batch

  def _prepare(self, step: int) -> None:
    """Background thread: puts (step, batch, error) for step, step + 1, ... into the queue."""
    while not self._stop.is_set():
      try:
        item = (step, self.batch_at(step), None)
      except Exception as e:  # Re-raised by __next__ in the consumer's thread.
        item = (step, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          pass
      if item[2] is not None:
        return
      step += 1

  def close(self) -> None:
    """Stops the background thread."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
