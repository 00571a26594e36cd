"""ResNet-{8,20,32,44,56} on CIFAR-10: configs/cifar10_resnet20.py with 2/6/10/14/18 convs a stage.

Parameters: ResNet-8 75,050; ResNet-20 269,034; ResNet-32 463,018; ResNet-44 657,002;
ResNet-56 850,986. The spec's scalability runs use the ResNet-20 schedule unchanged; ResNet-8 is
the CPU-sized CNN of configs/multitask.py.

Command:

  uhn-jax train --config configs/cifar10_resnet.py:56 --workdir runs/r56 \
      --config.data.data_dir=../shared/data/cifar10

Append ",runlocal" (e.g. `:32,runlocal`) for the CPU-sized generator and step budget.
"""

from configs import cifar10_resnet20

DEPTHS = {8: 2, 20: 6, 32: 10, 44: 14, 56: 18}


def get_config(arg: str | None = "20"):
    depth_str, *rest = (arg or "20").split(",")
    if not depth_str.isdigit() or int(depth_str) not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth_str!r}")
    config = cifar10_resnet20.get_config(rest[0] if rest else None)
    config.model.depths = (DEPTHS[int(depth_str)],) * 3
    return config
