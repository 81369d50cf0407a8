"""Tasks: what is generated (images, captions, text, points). `create(config)` builds the
config's task."""

from bit_diffusion.tasks import captions
from bit_diffusion.tasks import images
from bit_diffusion.tasks import points
from bit_diffusion.tasks import text

TASKS = {'image': images.ImageTask, 'captioning': captions.CaptionTask, 'text': text.TextTask,
         'points': points.PointsTask}


def create(config, **kwargs):
  """The task object of `config.task` ('image' | 'captioning' | 'text' | 'points')."""
  if config.task not in TASKS:
    raise ValueError(f'Unknown config.task {config.task!r}; choose one of {tuple(TASKS)}.')
  return TASKS[config.task](config, **kwargs)
