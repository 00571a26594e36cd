"""The generator's settings and their defaults: the one place both the module and configs read.

:class:`GeneratorConfig` is the frozen dataclass an experiment config holds
(``uhn_jax.config.Experiment.generator``). :class:`uhn_jax.generator.Generator` takes the
defaults of the fields it shares with it from :data:`DEFAULTS`, so a generator built directly
and one built by :func:`uhn_jax.generator.from_config` from a default config are the same.
"""

from __future__ import annotations

import dataclasses

from uhn_jax.core import checks, encodings

#: Values of ``encoding``.
ENCODINGS = encodings.ENCODINGS
#: Values of ``out_of_range``.
OUT_OF_RANGE = ("error", "clip")
#: Values of ``matmul_dtype`` (:func:`uhn_jax.generator.resolve_matmul_dtype`).
MATMUL_DTYPES = ("float32", "bfloat16", "auto")
#: Values of ``separable_method`` (:func:`uhn_jax.generator.use_nufft`).
SEPARABLE_METHODS = ("matmul", "nufft", "auto")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """The UHN generator (spec §2.1); defaults are the reference MNIST sizes."""

    # Width h, residual blocks, index Fourier frequencies (features 2 * n_freqs wide) and the
    # Fourier scale: spec §2.2's reference generator (148,353 params without structure).
    hidden: int = 64
    num_blocks: int = 2
    n_freqs: int = 1024
    sigma: float = 100.0
    encoding: str = "fourier"  # one of ENCODINGS
    # The per-model structure path (spec §2.1): its Fourier frequencies (d_model = 2 * this) and
    # attention heads.
    structure: bool = False
    structure_freqs: int = 32
    structure_heads: int = 4
    # "error": descriptors are checked on the host (generator.check); "clip": clamped in-graph.
    out_of_range: str = "error"
    # Generate large tensors through the separable first layer (same function, much faster).
    separable: bool = True
    # Scalars generated per chunk (see generator.generate_planned). 0 = chosen automatically from
    # memory_mib: one pass when it fits (fastest), else the largest chunk that does.
    chunk_size: int = 0
    # Memory budget of generation forward + backward for the automatic chunk size, in MiB.
    memory_mib: int = 1024
    # Operand dtype of the first Linear's matmuls (the bulk of the FLOPs): float32, bfloat16, or
    # auto = bfloat16 on GPU/TPU and CPUs with native bf16 dot products, float32 elsewhere
    # (generator.resolve_matmul_dtype). Pass "float32" for the exact, host-independent function.
    matmul_dtype: str = "auto"
    # First layer of separable tensors: matmul, nufft (a non-uniform FFT, O(N log N) instead of
    # O(N F H); needs jax-finufft and a CPU backend), or auto = nufft on CPU for large tensors
    # on one device (generator.use_nufft); sharded generation keeps the matmul.
    separable_method: str = "auto"
    # Recursive generation (spec §5.3): K generated UHNs between this generator and the base
    # model, H0 -> H1 -> ... -> H_K -> f; 0 = H0 generates f directly. No upper limit.
    chain_depth: int = 0

    def validate(self):
        check_module_fields(self, "generator.")
        checks.positive_int("generator.memory_mib", self.memory_mib)
        checks.non_negative_int("generator.chain_depth", self.chain_depth)
        if self.chain_depth and not self.structure:
            raise ValueError(
                "generator.chain_depth > 0 needs generator.structure=True (a generated UHN reads "
                "the encoded structure of the model it generates)"
            )
        checks.non_negative_int(
            "generator.chunk_size", self.chunk_size, " (0 = automatic from memory_mib)"
        )


def check_module_fields(obj, prefix: str) -> None:
    """Checks the settings a :class:`GeneratorConfig` shares with the ``Generator`` module.

    Args:
      obj: a :class:`GeneratorConfig` or a ``Generator``.
      prefix: put before each field's name in the messages (``"generator."`` for a config).

    Raises:
      ValueError: naming the first bad field, its value and what is allowed.
    """
    for name in ("hidden", "n_freqs", "structure_freqs", "structure_heads"):
        checks.positive_int(f"{prefix}{name}", getattr(obj, name))
    checks.non_negative_int(f"{prefix}num_blocks", obj.num_blocks)
    checks.in_range(f"{prefix}sigma", obj.sigma, 0.0, float("inf"), lo_open=True)
    checks.choice(f"{prefix}encoding", obj.encoding, ENCODINGS)
    checks.choice(f"{prefix}out_of_range", obj.out_of_range, OUT_OF_RANGE)
    checks.choice(f"{prefix}matmul_dtype", obj.matmul_dtype, MATMUL_DTYPES)
    checks.choice(f"{prefix}separable_method", obj.separable_method, SEPARABLE_METHODS)


#: The defaults every generator setting takes unless given.
DEFAULTS = GeneratorConfig()
