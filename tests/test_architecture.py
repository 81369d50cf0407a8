"""The structure docs/architecture.md promises: small modules, no import cycles, no subclass of
the engine, and methods and tasks that reach the engine only through its public surface."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'bit_diffusion')
MAX_LINES = 450


def _modules() -> dict[str, str]:
  """{'bit_diffusion.engine': path, ...} of every module of the package."""
  modules = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        modules[dotted.removesuffix('.__init__')] = path
  return modules


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The package modules that the module at `path` imports."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return {name for name in found if name in modules}


def test_no_module_over_the_line_limit():
  long = {name: n for name, path in _modules().items()
          if (n := len(open(path).read().splitlines())) > MAX_LINES}
  assert not long, f'Modules over {MAX_LINES} lines: {long}'


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
  # A package's __init__ importing its own submodules is not a cycle through them.
  for name in graph:
    graph[name] = {m for m in graph[name] if not m.startswith(name + '.')}
  # The graph is read right (else no cycle could ever be found).
  assert {'bit_diffusion.cpu', 'bit_diffusion.checkpointing'} <= graph['bit_diffusion.engine']
  assert 'bit_diffusion.unet' in graph['bit_diffusion.tasks.images']
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = 'open'
    for target in sorted(graph[node]):
      if state.get(target) == 'open':
        cycles.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target, stack + [target])
    state[node] = 'done'

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert not cycles, f'Import cycles: {cycles}'


@pytest.mark.parametrize('directory', ['bit_diffusion', 'tests', 'benchmarks', 'tools'])
def test_no_class_inherits_from_the_engine(directory):
  for root, _, files in os.walk(os.path.join(REPO, directory)):
    for name in (f for f in files if f.endswith('.py')):
      tree = ast.parse(open(os.path.join(root, name)).read())
      for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
          bases = [ast.unparse(base) for base in node.bases]
          assert not any(b.split('.')[-1] == 'Engine' for b in bases), (name, node.name, bases)


def test_methods_and_tasks_do_not_import_the_engine_or_each_other():
  """A method knows its task only through the object it is given, and neither knows the
  engine: they stay modules that the engine calls."""
  modules = _modules()
  for name, path in modules.items():
    imported = _imports(path, modules)
    if name.startswith('bit_diffusion.methods.'):
      assert not {m for m in imported if m.startswith('bit_diffusion.tasks')}, name
    if name.startswith(('bit_diffusion.methods.', 'bit_diffusion.tasks.')):
      assert not imported & {'bit_diffusion.engine', 'bit_diffusion.train_loop',
                             'bit_diffusion.generation'}, name
