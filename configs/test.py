"""Tiny CPU config for tests and smoke runs: a few steps of a small MLP on digits.

Command: uhn-jax train --config configs/test.py --workdir runs/test   (seconds)
Expected: it runs end to end and writes results.json; accuracy is not meaningful.
"""

from uhn_jax import config as config_lib


def get_config():
    config = config_lib.default_config_dict()
    config.data.name = "digits"
    config.model.widths = (16, 16)
    config.generator.hidden = 16
    config.generator.n_freqs = 32
    config.generator.chunk_size = 1024
    config.train.batch_size = 32
    config.train.steps = 4
    config.train.init_steps = 2
    config.train.lr = 1e-3
    config.train.init_lr = 1e-3
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.train.eval_batch_size = 128
    return config
