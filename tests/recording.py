"""A test helper: train a config while recording the mean loss of every logged interval."""

from bit_diffusion import train_loop


def train_recording_losses(config, workdir, method=None):
  """Runs train_and_evaluate; returns (final state, the mean loss of every logged interval)."""
  losses = []
  state = train_loop.train_and_evaluate(
      config, str(workdir), method=method,
      on_metrics=lambda step, scalars: losses.append(float(scalars['train/loss'])))
  return state, losses
