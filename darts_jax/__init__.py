"""darts_jax: DARTS (Liu, Simonyan & Yang, ICLR 2019) in JAX/Flax."""

from darts_jax.genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPES, PRIMITIVES, Genotype,
                                 derive_genotype, parse_genotype)
from darts_jax.supernet import (SupernetConfig, init_alphas, init_supernet, make_apply, make_loss)

__version__ = '0.1.0'
