"""Instruction-guided parameter generation (IGPG) on a model zoo: a VQ-VAE over weight chunks, an
autoregressive prior over its codes conditioned on dataset images, task and architecture,
zero-shot generation for seen (dataset, architecture) pairs, fine-tuning from generated
weights on held-out pairs, and a novelty check (issue 26, part 3; docs/igpg.md).

Arg ``<preset>[,<zoo path>]``:

* ``tiny`` (tests, seconds): the zoo of ``configs/zoo.py:digits_tiny`` (default
  ``runs/zoo_tiny``: digits MLPs of widths 8 and 8x8); ``digits/mlp-8x8`` is held out.
* ``digits``: the digits groups of a zoo (default ``runs/zoo_cpu``; allow_partial so that the
  digits groups serve before the rest is built): chunks of 4 values, 2,048 codes, the pairs of
  at most 520 tokens (MLPs 16 and 16x16, HaCNNs 8x8, 8x8 with a hidden layer of 32, 8x16);
  ``digits/mlp-16x16`` and ``digits/ha_cnn-8x16-k3`` are held out.
* ``fixed``: the fixed-seed zoo of ``configs/zoo.py:digits_fixed`` (default
  ``runs/zoo_digits_fixed``: 256 digits MLPs of each of 16, 16x16 and 16x16x16, all from one
  seed, only their hyperparameters varied): the ``digits`` preset's chunks and codes, but on
  the networks at or above their pair's median, coded in standardised frames
  (``vqvae.standardize``), 1,000 prior steps, each token decoded as its expected chunk
  (``sample.decode = "mean"``) at temperature 1; ``digits/mlp-16x16`` is held out and written
  with the ``deepen`` fallback (the prior writes an MLP 16, grown by a zero residual block).
* ``cpu``: the ``cpu`` zoo (default ``runs/zoo_cpu``): chunks of 8 values, every pair of at
  most 640 tokens (the digits MLPs but 64x64 and 128, every digits HaCNN, the MNIST and
  Fashion-MNIST HaCNNs; the other MLPs and the CIFAR-10 HaCNNs are longer and left out,
  listed in results.json); held out:
  ``fashion_mnist/ha_cnn-8x8-k3`` (its architecture is seen on MNIST, its dataset with 4x8
  HaCNNs, and MNIST's 8x8 HaCNNs are its transfer start) and ``digits/mlp-32x32``. Not run
  here (docs/igpg.md).

Commands (from Python: ``uhn_jax.training.igpg.run(igpg.get_config("digits"), workdir)``):

  uhn-jax igpg --config configs/igpg.py:tiny,runs/zoo_tiny --workdir runs/igpg_tiny
  uhn-jax igpg --config configs/igpg.py:digits,runs/zoo_cpu --workdir runs/igpg_digits
  uhn-jax igpg --config configs/igpg.py:fixed --workdir runs/igpg_fixed
  uhn-jax igpg --config configs/igpg.py:cpu --workdir runs/igpg_cpu

Expected: see docs/igpg.md for what was measured.
"""

import ml_collections

ZOOS = {
    "tiny": "runs/zoo_tiny",
    "digits": "runs/zoo_cpu",
    "fixed": "runs/zoo_digits_fixed",
    "cpu": "runs/zoo_cpu",
}
PRESETS = tuple(ZOOS)  # each preset and its default zoo


def train(steps: int, batch_size: int, lr: float, **fields):
    """An optimisation run through the loop: AdamW, warm-up then cosine decay."""
    t = ml_collections.ConfigDict()
    t.steps = steps
    t.batch_size = batch_size  # chunks (VQ-VAE) or networks (prior) per step
    t.lr = lr
    t.warmup_steps = 50
    t.weight_decay = 1e-4
    t.grad_clip = 1.0
    t.log_every = 50
    t.checkpoint_every = 500
    t.update(fields)
    return t


def base():
    """The fields every preset has, at the ``digits`` values."""
    c = ml_collections.ConfigDict()
    c.zoo = ""
    c.allow_partial = False  # refuse a zoo whose groups are not all complete
    c.seed = 0
    c.select = ml_collections.ConfigDict()
    c.select.snapshot = -1  # each network's snapshot index (-1 = its last)
    c.select.above_median = False  # train on networks at or above their pair's median only
    c.select.datasets = ()  # () = every dataset of the zoo
    c.select.families = ("mlp", "ha_cnn")
    c.select.max_tokens = 512  # longer pairs are left out (results.json lists them)
    c.select.max_networks_per_pair = 0  # 0 = all
    c.select.align_units = True  # hidden units in each pair's median network's order
    c.heldout = ()  # '<dataset>/<architecture>' pairs left out of all training
    c.vqvae = ml_collections.ConfigDict()
    c.vqvae.chunk_size = 16  # values per token: sequence length against reconstruction
    c.vqvae.max_chunks_per_layer = 4096
    c.vqvae.codebook_size = 512
    c.vqvae.latent_dim = 16
    c.vqvae.hidden = 256
    c.vqvae.role_dim = 16
    c.vqvae.max_layers = 12  # params leaves per network
    c.vqvae.position_buckets = 16  # a chunk's relative position within its leaf
    c.vqvae.beta = 0.25  # commitment loss weight
    c.vqvae.decay = 0.99  # codebook EMA
    c.vqvae.restart = 0.03  # restart codes used less than this share of the uniform rate
    # code each architecture relative to its training networks' per-value mean and std (only
    # seen architectures can then be coded) instead of by the init scale alone
    c.vqvae.standardize = False
    c.vqvae_train = train(4000, 512, 2e-3)
    c.prior = ml_collections.ConfigDict()
    c.prior.dim = 96
    c.prior.heads = 4
    c.prior.layers = 3
    c.prior.mlp_ratio = 4
    c.prior.dropout = 0.0  # on each block's attention and MLP outputs, in training
    c.prior.images_per_dataset = 256  # training images in a dataset's set encoding
    c.prior.val_fraction = 0.2  # of each seen pair's networks: choose the prior's step
    c.prior.eval_every = 100  # validation NLL every this many steps
    c.prior_train = train(3000, 16, 1e-3)
    c.sample = ml_collections.ConfigDict({"networks": 8, "temperature": 1.0, "top_k": 0})
    # "sample": decode the drawn codes; "mean": decode each token's expected chunk under the
    # distribution its code was drawn from (the drawn codes still choose the path)
    c.sample.decode = "sample"
    # a held-out pair: "none" = the prior writes it; "deepen" (MLPs) = the prior writes the
    # nearest seen depth on its dataset, grown by zero residual blocks (same function)
    c.sample.fallback = "none"
    c.finetune = ml_collections.ConfigDict()
    c.finetune.steps = (0, 10, 100)  # evaluate after k fine-tuning steps
    c.finetune.lr = 1e-3
    c.finetune.weight_decay = 1e-4
    c.finetune.batch_size = 0  # 0 = the zoo's batch size of the pair
    c.finetune.checkpoint_every = 50
    c.novelty = ml_collections.ConfigDict({"iterations": 30, "test_examples": 500, "max_zoo": 32})
    return c


def get_config(arg: str = "tiny"):
    """The preset named by ``arg`` (``<preset>[,<zoo path>]``, see the module docstring)."""
    name, _, zoo = arg.partition(",")
    if name not in PRESETS:
        raise ValueError(
            f"configs/igpg.py takes '<preset>[,<zoo path>]' with a preset in {PRESETS}"
        )
    c = base()
    c.zoo = zoo or ZOOS[name]
    if name == "tiny":
        c.select.max_tokens = 256
        c.heldout = ("digits/mlp-8x8",)
        c.vqvae.update({"chunk_size": 4, "codebook_size": 64, "hidden": 32, "max_layers": 8})
        c.vqvae.latent_dim = 8
        c.vqvae_train = train(300, 256, 3e-3, warmup_steps=10, log_every=100, checkpoint_every=300)
        c.prior.update({"dim": 16, "heads": 2, "layers": 1, "images_per_dataset": 32})
        c.prior.eval_every = 15
        c.prior_train = train(30, 4, 3e-3, warmup_steps=5, log_every=10, checkpoint_every=30)
        c.sample.networks = 3
        c.finetune.steps = (0, 2, 5)
        c.finetune.checkpoint_every = 5
        c.novelty.update({"iterations": 5, "test_examples": 64, "max_zoo": 4})
        return c
    if name == "digits":
        c.allow_partial = True
        c.select.datasets = ("digits",)
        c.select.max_tokens = 520
        c.heldout = ("digits/mlp-16x16", "digits/ha_cnn-8x16-k3")
        c.vqvae.update({"chunk_size": 4, "codebook_size": 2048})
        c.prior.update({"dim": 64, "layers": 2})
        c.prior_train.update({"steps": 1500, "batch_size": 8, "lr": 2e-3})
        return c
    if name == "fixed":
        c.select.max_tokens = 440
        c.heldout = ("digits/mlp-16x16",)
        c.vqvae.update({"chunk_size": 4, "codebook_size": 2048})
        c.prior.update({"dim": 64, "layers": 2})
        c.prior_train.update({"steps": 1000, "batch_size": 8, "lr": 2e-3})
        c.select.above_median = True  # the prior learns the better half of each pair
        c.vqvae.standardize = True  # codes are departures from each seen MLP's mean network
        c.sample.decode = "mean"  # each token decoded as its expected chunk
        c.sample.fallback = "deepen"  # 16x16 is written as 16, then grown (docs/igpg.md)
        return c
    c.select.max_tokens = 640
    c.heldout = ("fashion_mnist/ha_cnn-8x8-k3", "digits/mlp-32x32")
    c.vqvae.update({"chunk_size": 8, "codebook_size": 2048})
    c.prior.update({"dim": 64, "layers": 2})
    c.prior_train.update({"steps": 1500, "batch_size": 8, "lr": 2e-3})
    return c
