"""Recursive generation (spec §5.3) on digits: H0 -> H1 -> ... -> H_K -> f.

Commands (``:K``, the number of generated UHNs between H0 and f; default 1, no upper limit):

  uhn-jax train --config configs/digits_recursive.py:0 --workdir runs/recursive/k0
  uhn-jax train --config configs/digits_recursive.py:3 --workdir runs/recursive/k3

f is the digits MLP 64-64 (8,970 params); H0 is a UHN with the structure encoder (h=64, 128
index and 16 structure frequencies); every generated H_k is a RecursiveUHN with 256-wide index
features and 32-wide structure tokens (20,929 params) that reuses H0's frozen encoders. Only
H0 is trained. As the reference: the initialisation stage has K+1 sub-stages (H1's statistics
first, ..., f's last), each with a fresh optimiser and, for K >= 2, init_lr / 5, / 10, / 40
with warm-up; gradients clipped at 0.01; the task learning rate scaled by 1, 1/2, 1/8 for
K = 1, 2, 3 and a further 1/4 per level beyond (train.chain_lr_scale). CPU-sized: 150 init
steps per sub-stage and 1,500 task steps at lr 1e-4 (the reference: 2,000 per sub-stage and
30,000 at 2e-5).
"""

from uhn_jax import config as config_lib


def get_config(depth: str | None = None):
    k = int(depth or 1)
    config = config_lib.default_config_dict()
    config.data.name = "digits"
    config.model.widths = (64, 64)
    # Every generated H_k is as wide as H0's encodings: 2 x 16 structure and 2 x 128 index
    # features give 20,929-parameter H_k (82,817 with 32 / 256, which made a K = 2 step about
    # 7x slower on 2 CPU cores).
    config.generator.n_freqs = 128
    config.generator.structure_freqs = 16
    config.generator.structure = True
    config.generator.chain_depth = k
    config.train.batch_size = 128
    config.train.steps = 1500
    # The reference's K >= 1 rate (2e-5) is 10x below its single-model MNIST rate; 1e-4 is 10x
    # below digits_mlp's. At 1e-3 the K = 2 chain diverged within 100 task steps.
    config.train.lr = 1e-4
    config.train.warmup_steps = 100
    config.train.grad_clip = 0.01
    config.train.init_steps = 150 * (k + 1)
    config.train.init_lr = 1e-3
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    return config
