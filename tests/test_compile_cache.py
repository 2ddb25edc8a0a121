"""The persistent compilation cache: where it lives, how it is turned off, and that a second
process loads the first one's compiled program instead of compiling it again."""

import json
import os
import subprocess
import sys

from darts_jax import compile_cache

# A child process: compiles a small supernet's gradient with the cache in argv[1] and prints
# how many compilations JAX served from the cache and how many it wrote. Every program is
# cached (threshold 0 s, not the runs' 1 s), so that a small one whose compile is quick on a
# fast machine still makes the test.
CHILD = r'''
import json, sys
import jax
from darts_jax import compile_cache
counts = {}
jax.monitoring.register_event_listener(
    lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
compile_cache.configure(directory=sys.argv[1])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
from darts_jax.supernet import SupernetConfig, init_alphas, init_supernet, make_loss
config = SupernetConfig(C=2, layers=2, primitives=('none', 'skip_connect', 'sep_conv_3x3'))
v = init_supernet(jax.random.PRNGKey(0), config, (8, 8))
loss = make_loss(config)
batch = (jax.numpy.zeros((2, 8, 8, 3)), jax.numpy.zeros((2,), jax.numpy.int32))
alphas = init_alphas(jax.random.PRNGKey(1), config)
before = dict(counts)
grad = jax.jit(jax.grad(lambda w, a: loss(w, a, v.batch_stats, batch)[0], argnums=(0, 1)))
grad.lower(v.weights, alphas).compile()
hit = '/jax/compilation_cache/cache_hits'
print(json.dumps({'hits': counts.get(hit, 0),
                  'misses': counts.get('/jax/compilation_cache/cache_misses', 0),
                  'gradient_hit': counts.get(hit, 0) - before.get(hit, 0)}))
'''


def test_cache_dir_follows_the_environment(tmp_path):
  home = {'HOME': str(tmp_path)}
  assert compile_cache.cache_dir(home) == os.path.join(str(tmp_path), '.cache', 'darts_jax',
                                                       'jax_compilation_cache')
  xdg = {'XDG_CACHE_HOME': str(tmp_path / 'xdg')}
  assert compile_cache.cache_dir(xdg).startswith(str(tmp_path / 'xdg'))
  assert compile_cache.cache_dir({compile_cache.ENV: str(tmp_path / 'mine')}) == str(
      tmp_path / 'mine')
  for off in ('off', 'OFF', '0', 'false'):
    assert compile_cache.cache_dir({compile_cache.ENV: off}) is None


def test_a_second_process_loads_the_compiled_program(tmp_path):
  cache = str(tmp_path / 'cache')

  def child():
    out = subprocess.run([sys.executable, '-c', CHILD, cache], capture_output=True, text=True,
                         env=os.environ, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

  first = child()
  assert first['hits'] == 0 and first['misses'] >= 1 and first['gradient_hit'] == 0
  assert os.listdir(cache), 'the first process wrote nothing to the cache'
  second = child()
  # the gradient program itself came from the cache, and so did everything else
  assert second['gradient_hit'] == 1 and second['misses'] == 0, second


def test_the_cli_turns_it_off_with_one_flag(tmp_path):
  from experiments import cli
  config = os.path.join(os.path.dirname(cli.__file__), 'configs', 'search.py')
  import jax
  before = jax.config.jax_compilation_cache_dir
  try:
    cli.parse(['prog', f'--config={config}:tiny', f'--workdir={tmp_path}', '--nocompile_cache'],
              config)
    assert jax.config.jax_compilation_cache_dir is None
    os.environ[compile_cache.ENV] = str(tmp_path / 'cache')
    cli.parse(['prog', f'--config={config}:tiny', f'--workdir={tmp_path}'], config)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache')
  finally:
    os.environ.pop(compile_cache.ENV, None)
    jax.config.update('jax_compilation_cache_dir', before)
