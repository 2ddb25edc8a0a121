"""Configuration of ``python -m experiments.cifar_search``.

Pick a preset after the file name and override any key on the command line:

  python -m experiments.cifar_search --config=experiments/configs/search.py:tiny \
      --config.epochs=3 --workdir=/tmp/tiny

Presets: ``paper`` (the default: the paper's CIFAR-10 search), ``tiny`` (a CPU smoke test on
CIFAR-10: 3 cells, C=4, 256 images, 2 epochs), ``demo`` (scikit-learn's bundled digits:
real data, no download, a few minutes on 2 CPU cores) and ``pc_darts`` (PC-DARTS's CIFAR-10
search, its train_search.py), and one preset per member of the DARTS family with its paper's
recipe: ``gdas``, ``drnas``, ``sdarts_rs``, ``sdarts_adv``, ``darts_minus``. Any preset searches
as another member with ``--config.method=NAME`` (README "The DARTS family").
``nas_bench_201`` is NAS-Bench-201's DARTS search in its own space; a preset without an op list of
its own (not drnas, sdarts_*) searches that space with ``--config.search_space=nas_bench_201``
(README "NAS-Bench-201"), e.g. the demo:

  python -m experiments.cifar_search --config=experiments/configs/search.py:demo \
      --config.search_space=nas_bench_201 --workdir=/tmp/nb201
"""

import ml_collections

from darts_jax.search import SearchHParams
from darts_jax.supernet import SupernetConfig
from experiments.configs.scale_out import add_scale_out_keys

# the DARTS ops without 'none', as DrNAS's and SDARTS's DARTS spaces have them
SEVEN_OPS = ('max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
             'dil_conv_3x3', 'dil_conv_5x5')
# each family member's recipe, from its code's train_search.py (README "The DARTS family")
RECIPES = {
    # PC-DARTS (PCDARTS_README.md): K = 4, batch 256 for both halves, SGD 0.1 cosine to 0, Adam
    # 6e-4, the first 15 of 50 epochs weights only, first order
    'pc_darts': dict(method='pc_darts', partial_channels=4, batch_size=256, lr_base_batch=256,
                     w_lr=0.1, w_lr_min=0.0, alpha_lr=6e-4, warmup_epochs=15,
                     estimator='first_order'),
    # GDAS's NASNet-space CIFAR search (AutoDL-Projects, GDAS-NASNet-CIFAR.config): 250 epochs,
    # batch 256, SGD 0.025 cosine to 0.001 (theirs Nesterov), weight decay 5e-4, Adam 3e-4,
    # first order; tau 10 -> 0.1
    'gdas': dict(method='gdas', epochs=250, batch_size=256, lr_base_batch=256,
                 w_weight_decay=5e-4, estimator='first_order'),
    # DrNAS's DARTS-space train_search.py, its first stage for the whole search: 20 cells, C=36,
    # K=6, 7 ops without none, batch 64, SGD 0.1 cosine to 0, Adam 6e-4 with the KL regulariser
    # (no L2 then), 10 epochs of weights alone, first order
    'drnas': dict(method='drnas', init_channels=36, layers=20, partial_channels=6,
                  primitives=SEVEN_OPS, w_lr=0.1, w_lr_min=0.0, alpha_lr=6e-4,
                  alpha_weight_decay=0.0, warmup_epochs=10, estimator='first_order'),
    # SDARTS's sota/cnn/train_search.py in the DARTS space (its s5: 7 ops without none): the
    # DARTS recipe, first order, eps 0.03 -> 0.3, 7 PGD steps
    'sdarts_rs': dict(method='sdarts_rs', primitives=SEVEN_OPS, estimator='first_order'),
    'sdarts_adv': dict(method='sdarts_adv', primitives=SEVEN_OPS, estimator='first_order'),
    # DARTS-'s run_darts_minus.sh: the DARTS recipe, first order, the auxiliary skip from beta 1
    'darts_minus': dict(method='darts_minus', estimator='first_order'),
    # NAS-Bench-201's DARTS search (AutoDL-Projects, DARTS-V2.sh and algos/DARTS.config): its
    # cell and skeleton (C=16, N=5), 50 epochs, batch 64, SGD 0.025 cosine to 0.001 (theirs
    # Nesterov), weight decay 5e-4, clip 5; Adam 3e-4, weight decay 1e-3; second order
    'nas_bench_201': dict(search_space='nas_bench_201', w_weight_decay=5e-4),
}
PRESETS = ('paper', 'tiny', 'demo') + tuple(RECIPES)


def get_config(preset: str = 'paper') -> ml_collections.ConfigDict:
  preset = preset or 'paper'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {", ".join(PRESETS)}')
  # the paper's values are set once, in the library's dataclasses; this file names the keys
  paper, net = SearchHParams(), SupernetConfig()
  c = ml_collections.ConfigDict()
  c.preset = preset
  # data: cifar10, cifar100, mnist, fashion_mnist read their official archives in data_dir
  # ('' -> $DARTS_JAX_DATA_DIR or ~/.cache/darts_jax); folder reads data_dir/train/<class>/*
  # (or data_dir/<class>/*) into memory, imagenet too at image_size; digits is scikit-learn's
  # bundled 8x8 digits (README: Datasets)
  c.dataset = 'cifar10'
  c.data_source = ''  # archive, folder or tfds ('': the dataset's own)
  c.data_dir = ''
  c.download = True
  c.image_size = 0  # folder images resized to NxN (0: as stored)
  c.max_examples = 0  # use only the first N training images (0: all)
  c.train_portion = 0.5  # weights train on the first half, alphas on the second
  # '' (the dataset's own, as pt.darts: crop_flip; mnist affine; fashion_mnist affine_vflip),
  # crop_flip, affine, affine_vflip, none
  c.augmentation = ''
  c.crop_padding = 4
  c.flip = True
  c.seed = 2
  c.dtype = 'float32'

  add_scale_out_keys(c, base_batch=64)  # devices, hosts, BN semantics, bf16, lr scaling

  # the member of the DARTS family (darts_jax.methods): darts, pc_darts, gdas, drnas,
  # sdarts_rs, sdarts_adv, darts_minus (the preset of each name is its paper's recipe)
  c.method = 'darts'
  # PC-DARTS's K (methods pc_darts and drnas): 1/K of the channels in each op
  c.partial_channels = 4
  c.gdas_tau_max = 10.0  # GDAS's Gumbel-softmax temperature, linear from max to min
  c.gdas_tau_min = 0.1
  c.drnas_kl_scale = 1e-3  # DrNAS's weight of KL(Dir(elu(alpha) + 1) || Dir(1))
  c.sdarts_epsilon = 0.3  # SDARTS's final perturbation radius (linear from 0.03)
  c.sdarts_pgd_steps = 7  # SDARTS-ADV's attack steps
  c.darts_minus_beta = 1.0  # DARTS-'s initial auxiliary skip coefficient (linear to 0)

  # the search space: darts_cnn (the paper's cells) or nas_bench_201 (NAS-Bench-201's cell and
  # skeleton, of which init_channels, cells_per_stage and primitives apply)
  c.search_space = 'darts_cnn'
  c.cells_per_stage = 5  # NAS-Bench-201's N: cells per stage (3 stages)

  # supernet (the paper's search network: 8 cells, C=16, 4 intermediate nodes per cell)
  c.init_channels = net.C
  c.layers = net.layers
  c.nodes = net.nodes
  c.multiplier = net.multiplier
  c.stem_multiplier = net.stem_multiplier
  c.primitives = ()  # () -> the 8 DARTS ops
  # recompute each cell's forward in the backward pass: about a third of the activation
  # memory for one more forward per gradient (what lets exact second order fit at the
  # paper's size; README "Performance")
  c.remat_cells = True

  # bilevel optimisation (train_search.py: 50 epochs, batch 64, SGD 0.025 cosine to 0.001,
  # momentum 0.9, weight decay 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3)
  c.epochs = paper.epochs
  c.batch_size = 64
  c.w_lr = paper.w_lr
  c.w_lr_min = paper.w_lr_min
  c.w_momentum = paper.w_momentum
  c.w_weight_decay = paper.w_weight_decay
  c.grad_clip = paper.grad_clip
  c.alpha_lr = paper.alpha_lr
  c.alpha_b1 = paper.alpha_b1
  c.alpha_b2 = paper.alpha_b2
  c.alpha_eps = paper.alpha_eps
  c.alpha_weight_decay = paper.alpha_weight_decay
  # hypergradient (darts_jax.hypergradient.make_estimator): exact (second order, eq. 6
  # differentiated exactly; the default), first_order, finite_difference (eq. 7), unrolled
  # (K = unrolled_steps), implicit (IFT)
  c.estimator = paper.estimator
  c.unrolled_steps = paper.unrolled_steps
  c.remat = paper.remat
  c.fd_r = paper.fd_r
  c.implicit_solver = paper.implicit_solver
  c.implicit_maxiter = paper.implicit_maxiter
  c.implicit_damping = paper.implicit_damping
  c.neumann_terms = paper.neumann_terms
  c.neumann_lr = paper.neumann_lr
  # run a step's loss derivatives as one loop, so that XLA compiles each distinct derivative
  # program once (darts_jax.gradient_loop; first_order, exact, finite_difference): the same
  # numbers, a fraction of the compile time and the compiler's memory
  c.loop_gradients = paper.loop_gradients
  c.warmup_epochs = paper.warmup_epochs  # epochs of weight steps alone first (PC-DARTS: 15)

  # the health report (darts_jax.health; README "Search health"): collapse diagnostics every
  # epoch; the architecture Hessian's eigenvalues every hessian_every epochs (0: off;
  # RobustDARTS: 2) on the alpha half's first hessian_batch images (RobustDARTS: one batch of
  # 64), dense (n Hessian-vector products) or by hessian_lanczos_steps Lanczos steps (0: dense)
  c.hessian_every = 0
  c.hessian_batch = 64
  c.hessian_lanczos_steps = 0
  # none, darts_es (stop when the eigenvalue's sliding mean over es_window evaluations grows
  # es_factor-fold over es_delta evaluations, from epoch es_start_epoch; the genotype of that
  # earlier epoch is the result) or darts_ada (return there with 10x the weight decay, up to
  # 0.03); RobustDARTS's settings
  c.early_stop = 'none'
  c.es_window = 5
  c.es_delta = 4
  c.es_factor = 1.3
  c.es_start_epoch = 10

  # what the run shows and keeps
  c.log_every = 10
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.eval_batches = 0  # alpha-half batches evaluated per epoch (0: all, as the original)
  c.plots = True
  c.tensorboard = True
  c.progress = True

  if preset in RECIPES:  # a member of the DARTS family, its paper's search
    c.update(RECIPES[preset])
  elif preset == 'tiny':
    c.remat_cells = False  # small enough; compiles faster without
    c.max_examples = 256
    c.layers = 3
    c.init_channels = 4
    c.epochs = 2
    c.batch_size = 16
    c.log_every = 2
    c.checkpoint_every = 4
  elif preset == 'demo':
    c.dataset = 'digits'
    c.crop_padding = 1
    c.flip = False  # digits are not mirror-symmetric
    # first order keeps the demo to a few minutes on 2 CPU cores; exact second order compiles
    # and steps about 2.5x slower on CPU today (see README)
    c.estimator = 'first_order'
    c.remat_cells = False
    c.layers = 3
    c.init_channels = 8
    c.epochs = 5
    c.batch_size = 50
    c.w_lr = 0.05
    c.alpha_lr = 3e-3
    c.log_every = 5
    c.checkpoint_every = 15
  return c
