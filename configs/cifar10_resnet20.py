"""ResNet-20 on CIFAR-10 with the reference UHN (spec §4.1, §2.2, §2.4).

Model: the reference CNN family with depths (6, 6, 6), widths (16, 32, 64): 269,034 parameters.
Generator: h=128, 2 blocks, 2048 Fourier frequencies (591,617 parameters), no structure path.
Optimisation as in the reference script: no init stage, lr 2e-4, 5 warm-up epochs then cosine,
800 epochs of 195 steps (156,000 steps) at batch 256, with the reference augmentation.

Full reference schedule (an accelerator run; CIFAR in ../shared/data/cifar10 as a JPEG tarball):

  uhn-jax compare --config configs/cifar10_resnet20.py --workdir runs/cifar_r20 \
      --config.data.data_dir=../shared/data/cifar10 --seeds 3

CPU-sized run (`:runlocal`): on the 2-core CPU one ResNet-20 step at batch 256 takes 3.0 s even
in direct training and the reference generator adds ~15 s, so this uses a much smaller generator
(h=32, 256 frequencies, 20,929 parameters), batch 32, a 100-step initialisation stage at 2e-4
and 2,000 steps:

  uhn-jax compare --config configs/cifar10_resnet20.py:runlocal --workdir runs/cifar_r20_cpu \
      --config.data.data_dir=../shared/data/cifar10 --seeds 1

Expected: see the README results table.
"""

from uhn_jax import config as config_lib

STEPS_PER_EPOCH = 195  # 50,000 // 256


def get_config(arg: str | None = None):
    config = config_lib.default_config_dict()
    config.data.name = "cifar10"
    config.data.data_dir = ""  # CIFAR-10 python batches or the cifar10-jpeg.tar.gz tarball
    config.model.family = "cnn"
    config.model.depths = (6, 6, 6)
    config.model.widths = (16, 32, 64)
    config.generator.hidden = 128
    config.generator.n_freqs = 2048
    # Generation forward+backward of ResNet-20 with this generator peaks at 947 MiB RSS with
    # chunks of 2,048 scalars and 1,070 MiB with the library default of 4,096 (README).
    config.generator.chunk_size = 2048
    config.train.batch_size = 256
    config.train.steps = 800 * STEPS_PER_EPOCH
    config.train.warmup_steps = 5 * STEPS_PER_EPOCH
    config.train.lr = 2e-4
    config.train.init_steps = 0
    config.train.init_lr = 0.0
    config.train.eval_every = 10 * STEPS_PER_EPOCH
    config.train.eval_batch_size = 500
    config.train.checkpoint_every = 1000
    if arg == "runlocal":
        config.generator.hidden = 32
        config.generator.n_freqs = 256
        config.generator.chunk_size = 4096  # small generator, small chunks: as the README run
        config.train.batch_size = 32
        config.train.steps = 2000
        config.train.warmup_steps = 100
        # Without the reference's 150k steps to recover, start from matched init statistics: the
        # raw generator's weights are ~5x too large and the first losses are ~25.
        config.train.init_steps = 100
        config.train.init_lr = 2e-4
        config.train.eval_every = 500
        config.train.checkpoint_every = 250
    elif arg:
        raise ValueError(f"unknown cifar10_resnet20 variant {arg!r}; use ':runlocal' or nothing")
    return config
