"""A text Transformer trained on one dataset, frozen, adapted to another (issue 25, part 2).

``:<source>,<target>,<method>[,cpu]``, e.g. ``:ag_news,mr,attention,cpu``; methods ``head`` (a
new classifier head on the frozen model), ``attention`` (attention hypernetworks on its two
attention layers + a new head) and ``full`` (every param fine-tuned from the source's, with a
new head). The source is a direct run of ``configs/text.py:<source>[,cpu]``, exported:

  uhn-jax train --config configs/text.py:ag_news,cpu --config.mode=direct \\
      --workdir runs/adapt/source --config.data.data_dir=../shared/data
  uhn-jax export --workdir runs/adapt/source
  uhn-jax train --config configs/adapt_text.py:ag_news,mr,attention,cpu \\
      --workdir runs/adapt/mr_attention/seed0 --config.adapt.source=runs/adapt/source \\
      --config.data.data_dir=../shared/data --config.seed=0

The target run keeps the source's architecture (its ``model`` group, with
``model.max_positions`` = the source's 128 rows of the frozen positional table) and vocabulary
(``data.vocab_from``, ``data.vocab_size``); its texts keep their own length (``data.max_len``:
MR's 64, which holds its longest sentence of 61 tokens and costs half of AG News' 128 per
step; padding does not change the logits), and it takes the target's schedule from
``configs/text.py:<target>[,cpu]`` (``,cpu``: 20 epochs of MR, a 1-epoch warm-up). The
learning rates per method are :data:`LR`. Expected (AG News -> MR, ``,cpu``, 3 seeds, 6-16 min
a run on 2 CPU cores): head 54.91 %, attention 64.42 %, full 64.07 %. The pairs' default layer
structure (1, 0.25, 1) trains 8,512 params, 7.0 % of the 122,242 of the ``,cpu`` model.
docs/attention_hypernet.md has the whole experiment (3 methods x 3 seeds) and what to expect.
"""

from configs import text
from uhn_jax import config as config_lib

#: Peak learning rate of each method (AdamW, warm-up then cosine decay): the new head and the
#: small pairs take a larger step than fine-tuning, which keeps direct training's. At 2e-3 the
#: pairs underfit MR (training loss 0.66 at the end, 3.2 pp below full fine-tuning).
LR = {"head": 1e-2, "attention": 1e-2, "full": 1e-3}


def get_config(arg: str | None = None):
    parts = (arg or "ag_news,mr,attention").split(",")
    source, target, method, *variant = parts + [""] * max(0, 3 - len(parts))
    ok = (
        source in text.REFERENCE
        and target in text.REFERENCE
        and source != target
        and method in config_lib.ADAPT_METHODS
        and variant in ([], ["cpu"])
    )
    if not ok:
        raise ValueError(
            f"unknown adapt_text config {arg!r}; use <source>,<target>,<method>[,cpu] with two "
            f"different datasets of {sorted(text.REFERENCE)} and a method of "
            f"{config_lib.ADAPT_METHODS}"
        )
    suffix = ",cpu" if variant else ""
    config = text.get_config(target + suffix)
    src = text.get_config(source + suffix)
    config.mode = "adapt"
    config.model = src.model  # the frozen model's architecture
    config.data.vocab_from = source
    config.data.vocab_size = src.data.vocab_size
    config.model.max_positions = src.model.max_positions or src.data.max_len
    config.adapt.method = method
    config.train.lr = LR[method]
    return config
