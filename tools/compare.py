"""`make compare`: Bit Diffusion, GGM and the autoregressive baseline on one task, trained for the
same wall-clock time on this machine and scored by the task's own eval, in one table.

  python tools/compare.py --task=text [--minutes=30] [--workdir=runs/compare_text]
                          [--calibration_steps=60] [--override=a.b=value ...]

Equal training time, not equal steps: the methods' steps cost different amounts (a GGM step is
one network pass; a Bit Diffusion step adds the self-conditioning pass). For each method the
tool first times `--calibration_steps` training steps of its config (a short run in
WORKDIR/calibration/<method>; the rate is read between the log lines of step 10 and the last
step, so start-up and compilation are not counted), sets `training.num_steps` to the steps that
fit in `--minutes` (the learning-rate schedule then ends where training does), trains it in
WORKDIR/<method>, and scores it with `--mode=eval`. Every stage writes its result to
WORKDIR/compare.json, so a stopped run resumes where it was. Writes WORKDIR/compare.md: steps,
measured training time, the task's scores and the sampling cost per sample.
"""

import datetime
import json
import os
import re
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined only when run as a script, so that importing this module, as the
  tests do, adds no absl flags to the importer's)."""
  flags.DEFINE_enum('task', 'text', ['text', 'digits'], 'Which comparison (COMPARISONS).')
  flags.DEFINE_float('minutes', 30.0, 'Training wall-clock time per method.')
  flags.DEFINE_string('workdir', '', 'Where the methods train (default runs/compare_<task>).')
  flags.DEFINE_integer('calibration_steps', 60, 'Steps timed per method to set num_steps.')
  flags.DEFINE_multi_string('override', [], 'a.b=value config overrides given to every run '
                            '(training and eval), e.g. eval.num_samples=128; NAME:a.b=value only '
                            'to the config file NAME (e.g. text:eval.sweep_td=(0.,)).')


# task -> [(method name, config file)]. Digits have no autoregressive config (images are not
# token sequences for it); GGM on digits comes with configs/digits_ggm.py.
COMPARISONS = {
    'text': [('Bit Diffusion', 'configs/text.py'), ('GGM', 'configs/text_ggm.py'),
             ('autoregressive', 'configs/text_ar.py')],
    'digits': [('Bit Diffusion', 'configs/digits.py'), ('GGM', 'configs/digits_ggm.py')],
}
LOG_STEP = re.compile(r'^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*\] \[(\d+)\] train/', re.MULTILINE)


def step_times(log: str) -> dict[int, float]:
  """{step: seconds since the epoch} of the `[step] train/...` metric lines of an absl log."""
  year = datetime.date.today().year
  times = {}
  for month_day, clock, step in LOG_STEP.findall(log):
    stamp = datetime.datetime.strptime(f'{year}{month_day} {clock}', '%Y%m%d %H:%M:%S.%f')
    times[int(step)] = stamp.timestamp()
  return times


def steps_per_second(log: str, first_step: int = 10) -> float:
  """Training rate between the metric lines of `first_step` and the last step in `log`."""
  times = step_times(log)
  last = max(times, default=0)
  if first_step not in times or last <= first_step:
    raise ValueError(f'The log has no train/ metric lines at step {first_step} and after it; '
                     'was training.log_every changed, or did the run fail?')
  return (last - first_step) / (times[last] - times[first_step])


def overrides_for(key: str, overrides: list[str]) -> list[str]:
  """The overrides that apply to config file `key` ('text' for configs/text.py): the plain ones
  and those written `key:a.b=value`."""
  chosen = []
  for override in overrides:
    name, colon, rest = override.partition(':')
    if not colon or '=' in name:  # No 'NAME:' prefix (a ':' after the '=' is in the value).
      chosen.append(override)
    elif name == key:
      chosen.append(rest)
  return chosen


def run_main(config: str, workdir: str, overrides: list[str], log_path: str) -> float:
  """Runs main.py with `overrides` (a.b=value), its log in `log_path`; returns the wall time."""
  command = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config}',
             f'--workdir={workdir}'] + [f'--config.{o}' if '=' in o and not o.startswith('--')
                                        else o for o in overrides]
  start = time.time()
  with open(log_path, 'w') as log:
    result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}); see {log_path}.')
  return time.time() - start


def latest_eval(workdir: str, task: str) -> dict:
  """The newest eval JSON of a workdir: eval/text_<step>.json or eval/metrics_<step>.json."""
  folder = os.path.join(workdir, 'eval')
  prefix = 'text_' if task == 'text' else 'metrics_'
  names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith('.json')]
  if not names:
    raise FileNotFoundError(f'No {prefix}*.json in {folder}.')
  newest = max(names, key=lambda n: os.path.getmtime(os.path.join(folder, n)))
  with open(os.path.join(folder, newest)) as f:
    return json.load(f)


def text_rows(name: str, record: dict) -> list[str]:
  """Markdown rows of one method's text eval: every sampler setting it was scored with."""
  ev, rows = record['eval'], []
  infill = {row['span']: row['model'] for row in ev.get('infill', [])}
  spans = ' / '.join(f'{100 * infill[s]:.1f}%' for s in sorted(infill)) or 'n/a'
  for row in ev['rows'][2:]:  # The first two are held-out text and the unigram sampler.
    per_sample = row['seconds'] / ev['num_samples']
    rows.append(f"| {name} | {row['setting']} | {record['num_steps']} | "
                f"{record['train_seconds'] / 60:.1f} | {row['gen_ppl']:.1f} | "
                f"{row['bigram_tv']:.3f} | {spans} | {per_sample * 1000:.0f} |")
  return rows


def text_table(records: dict) -> str:
  first = next(iter(records.values()))['eval']
  floor, ceiling = first['rows'][0], first['rows'][1]
  lines = ['| method | sampler | steps | training min | gen. perplexity | bigram TV | '
           'infilling (spans ' + ' / '.join(str(r['span']) for r in first.get('infill', []))
           + ') | sampling ms per window |', '| --- ' * 8 + '|']
  for reference in (floor, ceiling):
    lines.append(f"| {reference['setting']} | | | | {reference['gen_ppl']:.1f} | "
                 f"{reference['bigram_tv']:.3f} | | |")
  for name, record in records.items():
    lines += text_rows(name, record)
  return '\n'.join(lines)


def digits_table(records: dict) -> str:
  lines = ['| method | steps | training min | FID | precision | recall | '
           'sampling ms per image |', '| --- ' * 7 + '|']
  for name, record in records.items():
    ev = record['eval']
    per_sample = ev['eval/seconds'] / ev['eval/num_samples']
    lines.append(f"| {name} | {record['num_steps']} | {record['train_seconds'] / 60:.1f} | "
                 f"{ev['eval/fid']:.2f} | {ev['eval/precision']:.3f} | "
                 f"{ev['eval/recall']:.3f} | {per_sample * 1000:.0f} |")
  first = next(iter(records.values()))['eval']
  if 'eval/fid_floor' in first:
    lines.append(f"| real data (floor) | | | {first['eval/fid_floor']:.2f} | "
                 f"{first['eval/precision_floor']:.3f} | {first['eval/recall_floor']:.3f} | |")
  return '\n'.join(lines)


def main(argv):
  del argv
  workdir = os.path.abspath(FLAGS.workdir or os.path.join(ROOT, 'runs', f'compare_{FLAGS.task}'))
  os.makedirs(os.path.join(workdir, 'calibration'), exist_ok=True)
  state_path = os.path.join(workdir, 'compare.json')
  state = {}
  if os.path.exists(state_path):
    with open(state_path) as f:
      state = json.load(f)

  def save():
    with open(state_path, 'w') as f:
      json.dump(state, f, indent=2)

  for name, config in COMPARISONS[FLAGS.task]:
    key = os.path.splitext(os.path.basename(config))[0]
    record = state.setdefault(key, {'method': name, 'config': config})
    overrides = overrides_for(key, FLAGS.override)
    if 'num_steps' not in record:
      calibration = os.path.join(workdir, 'calibration', key)
      log_path = calibration + '.log'
      run_main(config, calibration, overrides + [
          f'training.num_steps={FLAGS.calibration_steps}', 'training.log_every=10',
          f'training.sample_every={10**9}', f'training.checkpoint_every={10**9}'], log_path)
      with open(log_path) as f:
        record['steps_per_second'] = steps_per_second(f.read())
      record['num_steps'] = max(1, int(record['steps_per_second'] * FLAGS.minutes * 60))
      save()
      print(f'{name}: {record["steps_per_second"]:.2f} steps/s -> {record["num_steps"]} steps',
            flush=True)
    run_overrides = overrides + [f'training.num_steps={record["num_steps"]}']
    if 'train_seconds' not in record:
      record['train_seconds'] = run_main(config, os.path.join(workdir, key), run_overrides,
                                         os.path.join(workdir, key + '.train.log'))
      save()
      print(f'{name}: trained in {record["train_seconds"] / 60:.1f} min', flush=True)
    if 'eval' not in record:
      record['eval_seconds'] = run_main(config, os.path.join(workdir, key),
                                        run_overrides + ['--mode=eval'],
                                        os.path.join(workdir, key + '.eval.log'))
      record['eval'] = latest_eval(os.path.join(workdir, key), FLAGS.task)
      save()
  records = {record['method']: record for record in state.values()}
  table = text_table(records) if FLAGS.task == 'text' else digits_table(records)
  with open(os.path.join(workdir, 'compare.md'), 'w') as f:
    f.write(f'# {FLAGS.task}: {FLAGS.minutes:g} minutes of training per method\n\n{table}\n')
  print(table)


if __name__ == '__main__':
  define_flags()
  app.run(main)
