"""DARTS candidate operations, written for *stacks of edges*.

Every op here works on an activation of layout ``(B, H, W, E * C)``: the inputs of ``E`` edges
placed side by side on the channel axis (edge ``e`` owns channels ``e*C .. e*C+C-1``). An op's
weights are stacked the same way, one slice per edge, so one traced op serves ``E`` edges of the
search cell at once (the supernet batches all edges that leave the same node). With ``E = 1`` the
same modules are the ops of the evaluation networks.

Semantics follow the original DARTS code (quark0/darts ``cnn/operations.py``): symmetric padding,
average pooling that does not count padded cells, convolutions without bias, BatchNorm in
PyTorch's convention (eps 1e-5, momentum 0.1, running variance updated with the unbiased batch
variance). Layouts: NHWC activations, depthwise kernels ``(k, k, E*C)``, pointwise kernels
``(E, C_in, C_out)``.

The submodules, by layer (each imports only those above it):

- :mod:`darts_jax.ops.kernels`: pure functions and their CPU lowerings (depthwise, pointwise and
  dense convolutions, pooling, BatchNorm, drop path).
- :mod:`darts_jax.ops.init`: PyTorch's default initialisation, and parameter counting.
- :mod:`darts_jax.ops.modules`: the Linen modules built on them (the ops and their parts, the
  stems' ``Conv`` and the classifiers' ``Linear``).
- :mod:`darts_jax.ops.registry`: op names to module factories (``OPS``, ``make_op``, user ops).

Nothing is re-exported here: write ``from darts_jax.ops import modules, registry``.
"""
