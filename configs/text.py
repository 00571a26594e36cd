"""Text classification with the reference Transformer (spec §4.3).

Commands (``:<dataset>[,cpu]``; datasets ag_news, imdb, mr):

  uhn-jax compare --config configs/text.py:mr,cpu --workdir runs/mr --seeds 3 \\
      --config.data.data_dir=../shared/data
  uhn-jax train --config configs/text.py:ag_news --workdir runs/ag_news \\
      --config.data.data_dir=../shared/data

The reference configs: AG News (max length 128, 2 encoders, 378,372 params, lr 5e-5, 50
epochs, no initialisation stage) and IMDB (max length 512, 1 encoder, dropout 0.4, 377,858
params, initialisation 5e-5 x 100, lr 1e-4, 100 epochs), with 5-epoch warm-up and the
reference generator (h=128, 2048 frequencies). MR (sentence polarity, max length 64) uses the
AG News architecture. Only AG News' test.csv is in ../shared/data, so ``data.ag_news_split``
"auto" trains on a fixed stratified 80 % of it (text_data.load_ag_news).

``,cpu`` is the CPU-sized variant the README's figures use: the same architecture and data
with a vocabulary of 1,000 words, a generator of h=64 with 256 frequencies and Fourier scale
sigma = 3000, a 200-step initialisation stage at 1e-2, then 20 epochs at lr 1e-3 (2e-3 for MR;
direct training: the same schedule with Adam at 1e-3; the reference has no direct baseline). The
settings come from MR (README): with 100 init steps at 1e-3 every generated tensor ended with
about the same std (token table 0.20 against its target 1.0) and the UHN stayed at chance; 200
steps at 3e-3 fit the tensors for seed 0 only (token std 0.90, against 0.40 for seeds 1 and 2),
200 steps at 1e-2 for seeds 0, 1 and 2 (token std 0.97). At the full 5,000 words the h=64
generator stayed 9 pp below direct training.
"""

from uhn_jax import config as config_lib

# name: (max_len, encoders, dropout, init_lr, init_steps, lr, epochs); spec §2.4 and §4.3.
REFERENCE = {
    "ag_news": (128, 2, 0.2, 0.0, 0, 5e-5, 50),
    "imdb": (512, 1, 0.4, 5e-5, 100, 1e-4, 100),
    "mr": (64, 2, 0.2, 0.0, 0, 5e-5, 50),
}
# The UHN's learning rate in the ``,cpu`` variant (direct training stays at 1e-3). MR's UHN
# underfit at 1e-3 (seed 0: 68.6 % train accuracy against 73.1 % direct) and fit at 2e-3 (README).
CPU_LR = {"ag_news": 1e-3, "imdb": 1e-3, "mr": 2e-3}
# Training examples of each dataset's default split (the schedule is set in epochs).
TRAIN_SIZES = {"ag_news": 6080, "imdb": 25000, "mr": 9596}


def get_config(arg: str | None = None):
    name, *variant = (arg or "ag_news").split(",")
    if name not in REFERENCE or variant not in ([], ["cpu"]):
        raise ValueError(
            f"unknown text config {arg!r}; use <dataset>[,cpu] with dataset in {sorted(REFERENCE)}"
        )
    max_len, encoders, dropout, init_lr, init_steps, lr, epochs = REFERENCE[name]
    config = config_lib.default_config_dict()
    config.data.name = name
    config.data.max_len = max_len
    config.model.family = "transformer"
    config.model.embed_dim = 64
    config.model.num_encoders = encoders
    config.model.num_heads = 2
    config.model.linears_per_encoder = 2
    config.model.dropout_rate = dropout
    config.generator.hidden = 128
    config.generator.n_freqs = 2048
    config.train.batch_size = 256
    config.train.eval_batch_size = 500
    config.train.lr = lr
    config.train.direct_lr = 1e-3
    config.train.init_lr = init_lr
    config.train.init_steps = init_steps
    if variant:
        config.data.vocab_size = 1000
        config.generator.hidden = 64
        config.generator.n_freqs = 256
        config.generator.sigma = 3000.0
        config.train.lr = CPU_LR[name]
        config.train.init_lr = 1e-2
        config.train.init_steps = 200
        epochs = 20
    steps_per_epoch = TRAIN_SIZES[name] // config.train.batch_size
    config.train.steps = epochs * steps_per_epoch
    config.train.warmup_steps = 5 * steps_per_epoch if not variant else steps_per_epoch
    config.train.log_every = 20
    config.train.checkpoint_every = 200
    return config
