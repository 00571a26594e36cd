"""Multi-model UHN (spec §5.1) on digits: one generator for 80 MLPs of a width/depth family,
evaluated on 20 held-out MLPs it never trained on.

Command (about N minutes on 2 CPU cores):

  uhn-jax train --config configs/digits_mlp_set.py --workdir runs/digits_set

The set (configs/model_sets/digits_mlp_100.json) holds 100 distinct MLPs with 1-3 hidden layers
of widths in {16, 24, ..., 64}, drawn with ``python -m uhn_jax.training.model_sets --out
configs/model_sets/digits_mlp_100.json --n 100 --held-out 20 --seed 0``; the last 20 are held
out. Each step trains on one hold-in member (a per-epoch permutation of them). Every member is
run as the largest (64-64-64) with masks, so the 100 members share one compiled step.
results.json gives the mean test accuracy of the first 20 hold-in and of the 20 held-out
members, per-member figures, and the number of train-step compiles; members.png plots test
accuracy against parameter count.
"""

from pathlib import Path

from uhn_jax import config as config_lib


def get_config():
    config = config_lib.default_config_dict()
    config.data.name = "digits"
    config.model.family = "mlp"
    config.model.model_set = str(Path(__file__).parent / "model_sets" / "digits_mlp_100.json")
    config.generator.n_freqs = 256
    config.generator.structure = True
    config.train.batch_size = 128
    config.train.steps = 2000
    config.train.lr = 1e-3
    config.train.init_steps = 200
    config.train.init_lr = 1e-3
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    return config
