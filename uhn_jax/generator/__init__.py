"""The UHN generator (spec §2.1): a Flax Linen module and chunked, planned weight generation.

The public names are re-exported here (``from uhn_jax import generator; generator.generate``).
The modules, each with one job (``docs/generator.md``):

* :mod:`~uhn_jax.generator.settings`: :class:`GeneratorConfig`, the settings' one set of
  defaults, shared by :class:`Generator` and experiment configs, and their allowed values;
* :mod:`~uhn_jax.generator.module`: the Linen :class:`Generator` and its blocks,
  :func:`from_config`, :func:`init`, :func:`num_params`;
* :mod:`~uhn_jax.generator.precision`: bf16 operands for the first layer's matmuls;
* :mod:`~uhn_jax.generator.separable`: the separable first layer (angle-addition matmul and
  non-uniform FFT) and :func:`use_nufft`;
* :mod:`~uhn_jax.generator.planning`: host-side :func:`plan`, :func:`check`,
  :func:`check_inputs`, :func:`check_variables`, :func:`with_tables` and :func:`auto_chunking`;
* :mod:`~uhn_jax.generator.generation`: :func:`generate` and :func:`generate_planned`.
"""

from uhn_jax.generator.generation import (
    MIN_ALIGNED_CHUNK,
    ROW_ALIGN,
    TAIL_ROWS,
    generate,
    generate_planned,
)
from uhn_jax.generator.module import (
    INDEX_DIM,
    LAYER_NORM_EPS,
    STRUCTURE_DIM,
    Generator,
    ResidualBlock,
    StructureEncoder,
    from_config,
    init,
    num_params,
)
from uhn_jax.generator.planning import (
    DIRECT_FEATURE_CACHE_BYTES,
    MIN_SEPARABLE,
    Plan,
    auto_chunking,
    check,
    check_inputs,
    check_variables,
    plan,
    with_tables,
)
from uhn_jax.generator.precision import resolve_matmul_dtype
from uhn_jax.generator.separable import (
    NUFFT_EPS,
    NUFFT_MIN_GRID,
    NUFFT_UPSAMPLING,
    use_nufft,
)
from uhn_jax.generator.settings import (
    DEFAULTS,
    ENCODINGS,
    MATMUL_DTYPES,
    OUT_OF_RANGE,
    SEPARABLE_METHODS,
    GeneratorConfig,
)

__all__ = [
    "DEFAULTS",
    "DIRECT_FEATURE_CACHE_BYTES",
    "ENCODINGS",
    "INDEX_DIM",
    "LAYER_NORM_EPS",
    "MATMUL_DTYPES",
    "MIN_ALIGNED_CHUNK",
    "MIN_SEPARABLE",
    "NUFFT_EPS",
    "NUFFT_MIN_GRID",
    "NUFFT_UPSAMPLING",
    "OUT_OF_RANGE",
    "ROW_ALIGN",
    "SEPARABLE_METHODS",
    "STRUCTURE_DIM",
    "TAIL_ROWS",
    "Generator",
    "GeneratorConfig",
    "Plan",
    "ResidualBlock",
    "StructureEncoder",
    "auto_chunking",
    "check",
    "check_inputs",
    "check_variables",
    "from_config",
    "generate",
    "generate_planned",
    "init",
    "num_params",
    "plan",
    "resolve_matmul_dtype",
    "use_nufft",
    "with_tables",
]
