"""darts_jax: DARTS (Liu, Simonyan & Yang, ICLR 2019) in JAX/Flax.

Import from the modules themselves (``from darts_jax import search``, ``from darts_jax.supernet
import make_loss``); README's "Layout" says which module holds what.
"""

__version__ = '0.1.0'
