"""The classic conditional hypernetwork on digits (issue 23): a condition vector drives one weight
generator per tensor of the reference MLP (64-64), against the same MLP trained directly.

Commands (``:random`` for a random fixed condition, ``:input`` for data-adaptive weights, each
example conditioned on a linear encoding of itself):

  uhn-jax compare --config configs/digits_conditional.py --workdir runs/conditional --seeds 3
  uhn-jax compare --config configs/digits_conditional.py:input --workdir runs/adaptive --seeds 3 \
      --match_params   # adds the direct MLP with the hypernetwork's parameter count

Expected: within 1 pp of direct (README, Results).
"""

from configs import digits_mlp


def get_config(conditioning: str = "onehot"):
    config = digits_mlp.get_config()
    config.mode = "conditional"
    config.hypernet.conditioning = conditioning
    config.hypernet.conditioning_size = 8
    config.hypernet.hidden_sizes = (64,)
    return config
