"""Character-level language modelling on the MR corpus (issue 23): Ha et al.'s HyperLSTM
against a plain LSTM and a layer-norm LSTM of the same parameter count, in bits per character.

Commands (``:lstm``, ``:layernorm_lstm`` or ``:hyperlstm``; DATA holds rt_polarity/):

  uhn-jax train --config configs/mr_charlm.py:hyperlstm --workdir runs/charlm/hyperlstm \
      --config.data.data_dir=DATA --config.mode=direct

The data: the MR sentence-polarity corpus as characters, the last 10 % of its (interleaved)
lines held out (uhn_jax/data/chars.py), windows of 100 characters. Schedule: Adam at 2e-3 with a
linear warm-up of 100 steps, cosine decay over 3,000 steps, batch 32, gradient clipping at 1.0.
Expected (Ha et al., Penn Treebank): the HyperLSTM about 0.05 bpc below a same-size LSTM. Here,
3 seeds: HyperLSTM 2.036 ± 0.005, LSTM 2.236 ± 0.018, LN-LSTM 1.954 ± 0.002 test bpc
(docs/classic_hypernetworks.md).
"""

from uhn_jax import config as config_lib
from uhn_jax.models import hyperlstm

#: Characters of the MR vocabulary at the loader's default min_count (64 + <unk>).
VOCAB = 65
HYPER_FEATURES = 128  # the HyperLSTM's main width; its hyper LSTM has 128 units, N_z = 16
EMBED_DIM = 64


def get_config(cell: str = "hyperlstm"):
    config = config_lib.default_config_dict()
    config.mode = "direct"  # the HyperLSTM's hypernetwork is inside the cell
    config.data.name = "mr_chars"
    config.data.max_len = 100
    config.model.family = cell
    config.model.embed_dim = EMBED_DIM
    reference = hyperlstm.CharLM(VOCAB, HYPER_FEATURES, "hyperlstm", embed_dim=EMBED_DIM)
    width = HYPER_FEATURES if cell == "hyperlstm" else hyperlstm.matched_features(reference, cell)
    config.model.widths = (width,)  # the same parameter count for every cell (within 1 %)
    config.train.batch_size = 32
    config.train.steps = 3000
    config.train.lr = 2e-3
    config.train.warmup_steps = 100
    config.train.grad_clip = 1.0
    config.train.eval_batch_size = 256
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    return config
