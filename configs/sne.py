"""Predicting a network's test accuracy from its weights: SNE (a set-based encoder of the
weights, invariant to permutations of hidden units) against weight statistics with an MLP and
with gradient-boosted trees (Unterthiner et al. 2020) and an MLP on the flattened weights, on
a model zoo (issue 26, part 2; docs/sne.md).

Arg ``<preset>[,<zoo path>]``: ``digits_tiny`` (the zoo of ``configs/zoo.py:digits_tiny``,
default ``runs/zoo_tiny``: one same-zoo task, tiny sizes, seconds), ``digits`` (the digits
zoo, default ``runs/zoo_digits``, or the digits groups of a ``cpu`` zoo: same-zoo over all,
cross-architecture MLP <-> HaCNN, and same-zoo over the MLPs of width 16, where the flat MLP
applies), ``cpu`` (the ``cpu`` zoo, default ``runs/zoo_cpu``: the table of docs/sne.md, one
task of each kind: same-zoo over the Fashion-MNIST MLPs, cross-dataset MNIST <-> Fashion-MNIST
for MLPs, cross-architecture MLP <-> HaCNN on digits; 800 steps), ``fashion_mlp`` (the zoo of
``configs/zoo.py:fashion_mlp``, default ``runs/zoo_fashion_mlp``: the same-zoo task over its
1,024 Fashion-MNIST MLPs, the ``cpu`` preset's settings), ``digits_fixed`` (the fixed-seed zoo
of ``configs/zoo.py:digits_fixed``, default ``runs/zoo_digits_fixed``: same-zoo over its 768
digits MLPs, the ``digits`` settings), ``cross_architecture`` (the digits zoo, default
``runs/zoo_digits``: cross-architecture between every ordered pair of its families, MLP, CNN
and HaCNN, the ``cpu`` preset's settings, with SNE's ``raw_summary``, ``fan_in_scale``,
``last_layer`` and ``network_size`` on and ``layer_positions`` off).

The neural predictors train on the MSE plus a pairwise ranking loss and keep the params of the
best validation Kendall tau (``train.rank_weight``, ``train.select``; docs/sne.md).

Commands:

  uhn-jax zoo --config configs/zoo.py:digits_tiny --workdir runs/zoo_tiny
  uhn-jax sne --config configs/sne.py:digits_tiny --workdir runs/sne_tiny
  uhn-jax sne --config configs/sne.py:digits,runs/zoo_cpu --workdir runs/sne_digits \
      --config.allow_partial=True
  uhn-jax sne --config configs/sne.py:cpu --workdir runs/sne
  uhn-jax sne --config configs/sne.py:fashion_mlp --workdir runs/sne_fashion_mlp
  uhn-jax sne --config configs/sne.py:digits_fixed --workdir runs/sne_digits_fixed
  uhn-jax sne --config configs/sne.py:cross_architecture --workdir runs/sne_cross_architecture

Expected (docs/sne.md): ``cpu``, 3 seeds, Kendall's tau SNE / statistics MLP / statistics
trees: same-zoo Fashion-MNIST MLPs 0.77 / 0.61 / 0.55; cross-dataset Fashion-MNIST -> MNIST and
MNIST -> Fashion-MNIST MLPs 0.58 / 0.57 / 0.56 and 0.61 / 0.51 / 0.52; cross-architecture
MLP -> HaCNN 0.51 / 0.03 / 0.28, HaCNN -> MLP 0.36 / 0.45 / 0.29 (SNE 111-606 s a task on 2
cores; ``--config.sne.layer_summary=False``: 0.72, 0.64, 0.64, 0.35, 0.07).
``fashion_mlp``: SNE / statistics MLP / statistics trees 0.78 / 0.69 / 0.70 (3 seeds, SNE about
10 min a seed).
``digits_fixed``: 0.89 / 0.86 / 0.85 (3 seeds, SNE 2 min).
``cross_architecture`` (train -> test): MLP -> HaCNN 0.59 / 0.03 / 0.28, MLP -> CNN
0.74 / 0.48 / 0.29, HaCNN -> CNN 0.65 / 0.45 / 0.46, CNN -> HaCNN 0.63 / 0.38 / 0.51, HaCNN -> MLP
0.49 / 0.42 / 0.28, CNN -> MLP 0.59 / 0.40 / 0.25 (3 seeds, about 11 min in all; SNE's parts 7
min).
``digits_tiny``: about a minute, mostly compilation.
"""

import itertools

import ml_collections

ZOOS = {
    "digits_tiny": "runs/zoo_tiny",
    "digits": "runs/zoo_digits",
    "cpu": "runs/zoo_cpu",
    "fashion_mlp": "runs/zoo_fashion_mlp",
    "digits_fixed": "runs/zoo_digits_fixed",
    "cross_architecture": "runs/zoo_digits",
}
PRESETS = tuple(ZOOS)  # each preset and its default zoo


def task(kind: str, **fields):
    """A task: ``same_zoo`` (``datasets``, ``families``, ``test_fraction``), ``cross_dataset``
    (``train`` and ``test`` datasets, ``families``) or ``cross_architecture`` (``train`` and
    ``test`` families, ``datasets``); any kind may set ``widths`` (one architecture)."""
    t = ml_collections.ConfigDict()
    t.kind = kind
    t.datasets = ()  # same_zoo, cross_architecture: () = all (shared ones for cross)
    t.families = ()  # same_zoo, cross_dataset: () = all
    t.train = ""  # cross_dataset: a dataset; cross_architecture: a family
    t.test = ""
    t.widths = ()  # () = any architecture
    t.test_fraction = 0.2  # same_zoo: networks tested
    t.update(fields)
    return t


def base():
    """The fields every preset has, at the ``digits`` values, with no task."""
    c = ml_collections.ConfigDict()
    c.zoo = ""
    c.allow_partial = False  # refuse a zoo whose groups are not all complete
    c.snapshots = ()  # snapshot indices used (() = all)
    c.methods = ("sne", "stats_mlp", "stats_gbt", "flat_mlp")
    c.seeds = (0, 1, 2)  # each seed draws the split, the init and the batches
    c.val_fraction = 0.15  # training networks held out to choose the neural predictors' step
    c.keep_checkpoints = False  # keep each part's checkpoints once its result is written
    c.tasks = ml_collections.ConfigDict()
    c.chunking = ml_collections.ConfigDict()
    c.chunking.chunk_size = 32  # values per token: the memory knob
    c.chunking.max_tokens_per_layer = 8192
    c.sne = ml_collections.ConfigDict()
    c.sne.dim = 32
    c.sne.heads = 4
    c.sne.inducing = 8  # ISAB inducing points per layer
    c.sne.token_blocks = 1
    c.sne.layer_blocks = 1
    c.sne.hidden = 64
    c.sne.chunk_features = 16
    c.sne.max_classes = 10
    c.sne.max_layers = 8
    c.sne.layer_summary = True  # each layer's weight statistics; chunks read at its scale
    c.sne.raw_summary = False  # + the summary's statistics at the weights' own scale
    c.sne.fan_in_scale = False  # kernels' scale in units of 1 / sqrt(fan-in)
    c.sne.last_layer = False  # + the last layer's summary on the network vector
    c.sne.layer_positions = True  # each layer's index from the first and from the last
    c.sne.network_size = False  # + log10 params and layers, standardised over training
    c.mlp = ml_collections.ConfigDict({"hidden": (64, 64)})
    c.gbt = ml_collections.ConfigDict(
        {"max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 31, "min_samples_leaf": 20}
    )
    c.train = ml_collections.ConfigDict()
    c.train.steps = 1500
    c.train.batch_size = 16
    c.train.lr = 1e-3
    c.train.weight_decay = 1e-4
    c.train.warmup_steps = 50
    c.train.grad_clip = 1.0
    c.train.eval_every = 100
    c.train.eval_batch_size = 64
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.rank_weight = 1.0  # + this x a pairwise ranking loss (RankNet) on the batch
    c.train.select = "tau"  # validation keeps the params of highest "tau" or lowest "mse"
    return c


def get_config(arg: str = "digits_tiny"):
    """The preset named by ``arg`` (``<preset>[,<zoo path>]``, see the module docstring)."""
    name, _, zoo = arg.partition(",")
    if name not in PRESETS:
        raise ValueError(f"configs/sne.py takes '<preset>[,<zoo path>]' with a preset in {PRESETS}")
    c = base()
    c.zoo = zoo or ZOOS[name]
    if name == "digits_tiny":
        c.seeds = (0,)
        c.chunking.chunk_size = 8
        c.sne.update({"dim": 16, "heads": 2, "inducing": 4, "hidden": 16, "chunk_features": 8})
        c.mlp.hidden = (16,)
        c.gbt.update({"max_iter": 20, "min_samples_leaf": 2})
        c.train.update({"steps": 20, "batch_size": 4, "warmup_steps": 2, "eval_every": 10})
        c.train.update({"eval_batch_size": 8, "log_every": 10, "checkpoint_every": 10})
        c.tasks.same_zoo = task("same_zoo", test_fraction=0.25)
        return c
    if name == "digits_fixed":  # every network from one seed: only hyperparameters vary
        c.methods = ("sne", "stats_mlp", "stats_gbt")  # three layouts: no flat MLP
        c.tasks.same_zoo = task("same_zoo", datasets=("digits",))
        return c
    if name == "digits":
        c.tasks.same_zoo = task("same_zoo", datasets=("digits",))
        c.tasks.mlp_to_ha_cnn = task("cross_architecture", train="mlp", test="ha_cnn")
        c.tasks.ha_cnn_to_mlp = task("cross_architecture", train="ha_cnn", test="mlp")
        for t in (c.tasks.mlp_to_ha_cnn, c.tasks.ha_cnn_to_mlp):
            t.datasets = ("digits",)
        c.tasks.mlp16 = task("same_zoo", datasets=("digits",), families=("mlp",), widths=(16,))
        return c
    c.chunking.chunk_size = 64
    c.train.steps = 800
    if name == "cross_architecture":
        c.methods = ("sne", "stats_mlp", "stats_gbt")  # several layouts: no flat MLP
        c.sne.raw_summary, c.sne.layer_positions = True, False  # docs/sne.md measures each
        c.sne.network_size = c.sne.fan_in_scale = c.sne.last_layer = True
        for a, b in itertools.permutations(("mlp", "cnn", "ha_cnn"), 2):
            c.tasks[f"digits_{a}_to_{b}"] = task(
                "cross_architecture", train=a, test=b, datasets=("digits",)
            )
        return c
    c.tasks.same_zoo_fashion_mnist_mlp = task(
        "same_zoo", datasets=("fashion_mnist",), families=("mlp",)
    )
    if name == "fashion_mlp":
        c.methods = ("sne", "stats_mlp", "stats_gbt")  # several layouts: no flat MLP
        c.train.steps = 2400  # SNE's validation tau still rose at the 800th step
        return c
    for a, b in (("mnist", "fashion_mnist"), ("fashion_mnist", "mnist")):
        c.tasks[f"{a}_to_{b}_mlp"] = task("cross_dataset", train=a, test=b, families=("mlp",))
    c.tasks.digits_mlp_to_ha_cnn = task("cross_architecture", train="mlp", test="ha_cnn")
    c.tasks.digits_ha_cnn_to_mlp = task("cross_architecture", train="ha_cnn", test="mlp")
    for t in (c.tasks.digits_mlp_to_ha_cnn, c.tasks.digits_ha_cnn_to_mlp):
        t.datasets = ("digits",)
    return c
