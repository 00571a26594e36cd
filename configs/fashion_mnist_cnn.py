"""The reference MNIST CNN on Fashion-MNIST (full 60k train / 10k test).

Same model, generator and optimiser as configs/mnist_cnn.py (the reference has no Fashion-MNIST
script); 10 epochs of the 60k set at batch 256 = 2,340 steps.

Command (Debian's dataset-fashion-mnist package puts the files in
/usr/share/datasets/fashion-mnist):

  uhn-jax compare --config configs/fashion_mnist_cnn.py --workdir runs/fashion \
      --config.data.data_dir=/usr/share/datasets/fashion-mnist --seeds 3

CPU budget (`:runlocal`, the README's table): mnist_cnn's `:runlocal` optimisation (lr 5e-4, a
100-step UHN initialisation stage) for 2 epochs of the 60k set (468 steps, 23 warm-up):

  uhn-jax compare --config configs/fashion_mnist_cnn.py:runlocal --workdir runs/fashion_cpu \
      --config.data.data_dir=/usr/share/datasets/fashion-mnist --seeds 3

Expected: see the README results table (UHN within 1.5 pp of direct).
"""

from configs import mnist_cnn


def get_config(arg: str | None = None):
    config = mnist_cnn.get_config(arg)
    config.data.name = "fashion_mnist"
    if arg == "runlocal":
        config.train.steps = 468  # 2 epochs
        config.train.warmup_steps = 23
    else:
        config.train.steps = 2340
        config.train.warmup_steps = 234  # 1 epoch
    return config
