"""Datasets: loaders per modality, augmentation, TFDS, and the open registry (``registry``).

One module per job: ``files`` (missing-file errors, data_dir rules), ``idx`` (the MNIST file
format), ``images`` (ArrayDataset; digits, MNIST, Fashion-MNIST), ``cifar`` (CIFAR-10 pickles,
JPEG tarball, decoded cache), ``tfds`` (TFDS-prepared image datasets), ``augment`` (on-device
augmentation), ``text``, ``graphs``, ``formulas`` (and ``register_formula``) and ``registry``
(``data.name`` -> loader, task, model families, descriptor value; ``register_dataset``).
"""
