"""Special-function regression data for KANs: the reference's 15 scipy.special formulas.

Each dataset maps 2 inputs to 1 output (4 for ``ellipj``) through a function of
``scipy.special``. Following the reference (§4.4 of the spec):

- 1000 train and 1000 test points, raw inputs ``x ~ U[0, 1)^2``, except that ``yv`` and ``kv``
  draw their second input (the argument z) from ``U[0.1, 1)``, away from their pole at 0;
- targets are evaluated at the raw inputs and are **not** normalised;
- inputs are then rescaled affinely from their range to ``[-1, 1)``, which is what the KAN sees:
  ``x = 2 (raw - lo) / (hi - lo) - 1`` (see ``to_raw`` for the inverse);
- the metric is the RMSE over every test point and every output (``rmse``), the square root of
  the mean-reduced MSE training loss.

The spherical harmonics: the reference calls ``scipy.special.sph_harm(m, n, theta=x1,
phi=x2).real``, which was deprecated in SciPy 1.15 and is gone in 1.17. Its replacement
``sph_harm_y(n, m, theta, phi)`` swaps both the order of the integer arguments (m, n -> n, m)
and the meaning of the angles: in ``sph_harm`` theta was the azimuthal and phi the polar angle,
in ``sph_harm_y`` theta is polar and phi azimuthal. SciPy itself implemented the old function
as ``sph_harm(m, n, theta, phi) = sph_harm_y(n, m, phi, theta)``, and both carry the
Condon-Shortley phase, so the mapping used here,

    sph_harm(m, n, x1, x2)  ==  sph_harm_y(n, m, x2, x1),

reproduces the reference exactly: x1 is the azimuth, x2 the polar angle (both in radians,
within ``[0, 1)``). No other formula uses a deprecated function.

User code adds formulas with :func:`register_formula`; :func:`names` lists every registered one
and ``FORMULAS`` the reference's 15.

Data comes from a ``numpy.random.Generator`` seeded by ``(seed, crc32(name))``, with separate
child streams for train and test, so a seed gives bit-identical arrays, each formula sees its
own points, and ``n_train`` does not move the test set. The reference seeds the legacy global
``np.random`` with the run seed instead, so its exact points cannot be reproduced; only their
distribution is.
"""

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from uhn_jax.core import descriptors

# Sizes of the reference: 1000 train and 1000 test points, trained on as one full batch.
NUM_TRAIN = 1000
NUM_TEST = 1000
# First of the reference's three run seeds (21962, 59358, 78117).
DEFAULT_SEED = 21962

# Range of a raw input, as the half-open interval [lo, hi).
_UNIT = (0.0, 1.0)
# yv and kv diverge at z = 0, so the reference draws z from [0.1, 1).
_AWAY_FROM_ZERO = (0.1, 1.0)


@dataclasses.dataclass(frozen=True)
class Formula:
    """One special-function regression target.

    Attributes:
        name: Dataset name, e.g. ``"jv"``.
        fn: Maps raw inputs, float64 of shape ``(n, d_in)``, to targets of shape ``(n, d_out)``.
        input_ranges: ``(lo, hi)`` of each raw input, ``d_in`` of them; inputs are drawn
            uniformly from ``[lo, hi)``.
        d_out: Number of outputs.
        definition: The scipy call in terms of the raw inputs ``x1``, ``x2``.
        dataset_type: The ``dataset_type`` field of the global descriptor of a model trained on
            this formula: 7..21 for the built-ins (the reference's ``DatasetType``), the user's
            choice for registered ones.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    input_ranges: tuple[tuple[float, float], ...]
    d_out: int
    definition: str
    dataset_type: int

    @property
    def d_in(self) -> int:
        """Number of inputs."""
        return len(self.input_ranges)


def _ellipj(x: np.ndarray) -> np.ndarray:
    # All four Jacobi outputs (sn, cn, dn, ph) of u = x1 at parameter m = x2.
    return np.stack(scipy.special.ellipj(x[:, 0], x[:, 1]), axis=1)


def _two_arg(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable:
    def fn(x: np.ndarray) -> np.ndarray:
        return f(x[:, 0], x[:, 1])[:, None]

    return fn


def _lpmv(m: int) -> Callable:
    # Associated Legendre function P_v^m(x) of degree v = x1 at x = x2, order m fixed.
    def fn(x: np.ndarray) -> np.ndarray:
        return scipy.special.lpmv(m, x[:, 0], x[:, 1])[:, None]

    return fn


def _sph_harm(m: int, n: int) -> Callable:
    # Reference: sph_harm(m, n, theta=x1 (azimuth), phi=x2 (polar)).real. sph_harm_y takes the
    # degree first and the polar angle first, so x2 goes in as its theta and x1 as its phi.
    def fn(x: np.ndarray) -> np.ndarray:
        return scipy.special.sph_harm_y(n, m, x[:, 1], x[:, 0]).real[:, None]

    return fn


def _builtins() -> dict[str, Formula]:
    both_unit = (_UNIT, _UNIT)
    # (name, fn, input ranges, d_out, definition), in the order of the reference's DatasetType.
    rows = [
        ("ellipj", _ellipj, both_unit, 4, "ellipj(u=x1, m=x2) -> (sn, cn, dn, ph)"),
        ("ellipkinc", _two_arg(scipy.special.ellipkinc), both_unit, 1, "ellipkinc(x1, x2)"),
        ("ellipeinc", _two_arg(scipy.special.ellipeinc), both_unit, 1, "ellipeinc(x1, x2)"),
        ("jv", _two_arg(scipy.special.jv), both_unit, 1, "jv(v=x1, z=x2)"),
        ("yv", _two_arg(scipy.special.yv), (_UNIT, _AWAY_FROM_ZERO), 1, "yv(v=x1, z=x2)"),
        ("kv", _two_arg(scipy.special.kv), (_UNIT, _AWAY_FROM_ZERO), 1, "kv(v=x1, z=x2)"),
        ("iv", _two_arg(scipy.special.iv), both_unit, 1, "iv(v=x1, z=x2)"),
    ]
    for m in (0, 1, 2):
        rows.append((f"lpmv{m}", _lpmv(m), both_unit, 1, f"lpmv(m={m}, v=x1, x=x2)"))
    # (m, n) in the reference's order; the names read sph_harm<m><n>.
    for m, n in ((0, 1), (1, 1), (0, 2), (1, 2), (2, 2)):
        definition = (
            f"sph_harm(m={m}, n={n}, theta=x1, phi=x2).real "
            f"== sph_harm_y(n={n}, m={m}, theta=x2, phi=x1).real"
        )
        rows.append((f"sph_harm{m}{n}", _sph_harm(m, n), both_unit, 1, definition))
    first = descriptors.DatasetType.SPECIAL_ELLIPJ
    return {row[0]: Formula(*row, dataset_type=int(first) + i) for i, row in enumerate(rows)}


# Every registered formula by name: the built-ins, then register_formula's, in order.
_REGISTRY: dict[str, Formula] = _builtins()
# The reference's 15 formulas, in the order of its DatasetType enum (dataset_type 7..21).
FORMULAS: tuple[str, ...] = tuple(_REGISTRY)


@dataclasses.dataclass(frozen=True, eq=False)
class FormulaData:
    """One formula regression dataset, split into train and test, as float32 numpy arrays.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous; compare arrays directly.

    Attributes:
        name: Formula name, one of :func:`names`.
        x_train: Inputs rescaled to ``[-1, 1]``, shape ``(n_train, d_in)``.
        y_train: Targets at the raw inputs, not normalised, shape ``(n_train, d_out)``.
        x_test: Inputs, shape ``(n_test, d_in)``.
        y_test: Targets, shape ``(n_test, d_out)``.
        input_ranges: ``(lo, hi)`` of each raw input; ``to_raw`` maps ``x`` back into it.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_ranges: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        d_in = len(self.input_ranges)
        if d_in < 1:
            raise ValueError(f"{self.name}: input_ranges must name at least one input")
        for lo, hi in self.input_ranges:
            if not lo < hi:
                raise ValueError(f"{self.name}: input range ({lo}, {hi}) must have lo < hi")
        if self.y_train.ndim != 2 or self.y_test.ndim != 2:
            raise ValueError(
                f"{self.name}: targets must be 2-D, got y_train {self.y_train.shape} and "
                f"y_test {self.y_test.shape}"
            )
        d_out = self.y_train.shape[1]
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            for field, array in (("x", x), ("y", y)):
                if array.dtype != np.float32:
                    raise ValueError(
                        f"{self.name}: {field}_{part} must be float32, got {array.dtype}"
                    )
            n = y.shape[0]
            if x.shape != (n, d_in):
                raise ValueError(
                    f"{self.name}: x_{part} must have shape ({n}, {d_in}), got {x.shape}"
                )
            if y.shape != (n, d_out):
                raise ValueError(
                    f"{self.name}: y_{part} must have shape ({n}, {d_out}), got {y.shape}"
                )
            if n < 1:
                raise ValueError(f"{self.name}: the {part} split is empty")
            if not np.isfinite(y).all():
                raise ValueError(
                    f"{self.name}: y_{part} holds {int((~np.isfinite(y)).sum())} NaN or Inf values"
                )
            if np.abs(x).max() > 1:
                raise ValueError(f"{self.name}: x_{part} must lie in [-1, 1]")

    @property
    def d_in(self) -> int:
        """Number of inputs."""
        return self.x_train.shape[1]

    @property
    def d_out(self) -> int:
        """Number of outputs."""
        return self.y_train.shape[1]


def names() -> tuple[str, ...]:
    """Every registered formula: the reference's 15 (``FORMULAS``), then the user's."""
    return tuple(_REGISTRY)


def get_formula(name: str) -> Formula:
    """The registry entry of ``name``; raises ``ValueError`` listing the choices if unknown."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown formula {name!r}; choose one of {', '.join(_REGISTRY)}, or add it with "
            "uhn_jax.data.formulas.register_formula"
        )
    return _REGISTRY[name]


def register_formula(
    name: str,
    fn: Callable[[np.ndarray], np.ndarray],
    d_in: int,
    d_out: int = 1,
    *,
    dataset_type: int,
    input_ranges: Sequence[tuple[float, float]] | None = None,
    definition: str = "",
    overwrite: bool = False,
) -> Formula:
    """Adds a regression formula, after which ``DataConfig(name="formula", formula=name)``
    loads it like the built-ins (same sampling, rescaling and metric).

    Args:
        name: The formula's name, the value of ``data.formula``.
        fn: Maps raw inputs, float64 of shape ``(n, d_in)``, to targets of shape
            ``(n, d_out)`` (or ``(n,)`` when ``d_out == 1``); must be finite on the ranges.
        d_in: Number of inputs.
        d_out: Number of outputs.
        dataset_type: The global descriptor's ``dataset_type`` for models trained on it, an
            int >= 0 that no other formula uses (the built-ins take 7..21).
        input_ranges: ``(lo, hi)`` of each raw input, ``d_in`` of them; default ``[0, 1)``.
        definition: The formula in words, e.g. ``"erf(x1) * x2"``.
        overwrite: Replace a formula already registered under ``name``.

    Returns:
        The registered :class:`Formula`.

    Raises:
        ValueError: For an empty or taken name, bad sizes or ranges, a ``dataset_type`` that
            another formula holds, or an ``fn`` whose output does not have ``d_out`` columns.
        TypeError: If ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"formula name must be a non-empty string without spaces, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"formula {name!r} is already registered; pass overwrite=True to replace it"
        )
    if not callable(fn):
        raise TypeError(f"formula {name!r}: fn must be callable, got {type(fn).__name__}")
    _check_size(f"formula {name!r}: d_in", d_in)
    _check_size(f"formula {name!r}: d_out", d_out)
    ranges = _check_ranges(name, ((0.0, 1.0),) * d_in if input_ranges is None else input_ranges)
    if len(ranges) != d_in:
        raise ValueError(f"formula {name!r}: {len(ranges)} input_ranges for d_in={d_in} inputs")
    _check_dataset_type(name, dataset_type)
    formula = Formula(name, fn, ranges, d_out, definition or name, int(dataset_type))
    # One probe at the middle of the ranges catches a wrong output shape at registration.
    middle = np.mean(np.asarray(ranges, np.float64), axis=1)[None]
    out = np.asarray(fn(np.repeat(middle, 2, axis=0)))
    if out.size != 2 * d_out:
        raise ValueError(
            f"formula {name!r}: fn maps 2 points to shape {out.shape}, expected (2, {d_out}) "
            f"for d_out={d_out}"
        )
    _REGISTRY[name] = formula
    return formula


def _check_ranges(name: str, ranges: Sequence) -> tuple[tuple[float, float], ...]:
    out = []
    for pair in ranges:
        lo, hi = (float(v) for v in pair)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"formula {name!r}: input range {tuple(pair)} must be finite with lo < hi"
            )
        out.append((lo, hi))
    return tuple(out)


def _check_dataset_type(name: str, dataset_type: int) -> None:
    if isinstance(dataset_type, bool) or not isinstance(dataset_type, int | np.integer):
        raise ValueError(f"formula {name!r}: dataset_type must be an int, got {dataset_type!r}")
    if dataset_type < 0:
        raise ValueError(f"formula {name!r}: dataset_type must be >= 0, got {dataset_type}")
    for other in _REGISTRY.values():
        if other.name != name and other.dataset_type == dataset_type:
            raise ValueError(
                f"formula {name!r}: dataset_type {dataset_type} is taken by formula "
                f"{other.name!r}; choose another (in use: "
                f"{sorted(f.dataset_type for f in _REGISTRY.values())})"
            )


def to_unit(raw: np.ndarray, input_ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Rescales raw inputs from their ranges to ``[-1, 1]``: ``2 (raw - lo) / (hi - lo) - 1``."""
    lo, hi = np.asarray(input_ranges, dtype=np.float64).T
    return 2.0 * (np.asarray(raw, dtype=np.float64) - lo) / (hi - lo) - 1.0


def to_raw(x: np.ndarray, input_ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Inverse of ``to_unit``: maps KAN inputs in ``[-1, 1]`` back to the raw ranges (float64)."""
    lo, hi = np.asarray(input_ranges, dtype=np.float64).T
    return lo + (np.asarray(x, dtype=np.float64) + 1.0) * 0.5 * (hi - lo)


def evaluate(name: str, raw: np.ndarray) -> np.ndarray:
    """Evaluates formula ``name`` at raw inputs.

    Args:
        name: A registered formula, one of :func:`names`.
        raw: Raw inputs, shape ``(n, d_in)``, in the formula's units (not rescaled).

    Returns:
        float64 targets of shape ``(n, d_out)``.
    """
    formula = get_formula(name)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != formula.d_in:
        raise ValueError(f"{name}: raw inputs must have shape (n, {formula.d_in}), got {raw.shape}")
    return np.asarray(formula.fn(raw), dtype=np.float64).reshape(raw.shape[0], formula.d_out)


def _check_size(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


def make_formula_dataset(
    name: str,
    seed: int = DEFAULT_SEED,
    n_train: int = NUM_TRAIN,
    n_test: int = NUM_TEST,
) -> FormulaData:
    """Samples one formula regression dataset.

    Args:
        name: A registered formula, one of :func:`names`.
        seed: Non-negative run seed; each seed sees different points, as in the reference.
        n_train: Number of training points (1000 in the reference).
        n_test: Number of test points (1000 in the reference).

    Returns:
        A ``FormulaData`` whose inputs are rescaled to ``[-1, 1]`` and whose targets are the
        formula at the raw inputs.
    """
    formula = get_formula(name)
    _check_size("n_train", n_train)
    _check_size("n_test", n_test)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    # crc32 of the name rather than its position, so reordering FORMULAS changes no data.
    root = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())])
    lo, hi = np.asarray(formula.input_ranges, dtype=np.float64).T
    splits = []
    for child, n in zip(root.spawn(2), (n_train, n_test), strict=True):
        raw = lo + (hi - lo) * np.random.default_rng(child).random((n, formula.d_in))
        y = evaluate(name, raw)
        # Each built-in range is finite and closed off from the functions' poles, so this never
        # fires for the built-ins; it catches a registered formula that is not finite.
        if not np.isfinite(y).all():
            raise ValueError(f"{name}: the formula is not finite on {formula.input_ranges}")
        splits += [to_unit(raw, formula.input_ranges).astype(np.float32), y.astype(np.float32)]
    x_train, y_train, x_test, y_test = splits
    return FormulaData(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_ranges=formula.input_ranges,
    )


def rmse(pred: jax.Array | np.ndarray, target: jax.Array | np.ndarray) -> jax.Array:
    """Root mean squared error over every point and every output: ``sqrt(mean((pred - y)^2))``.

    This is the reference's metric, the square root of the mean-reduced MSE loss, so for
    ``ellipj`` the 4 outputs are pooled rather than averaged per output. Works under ``jit``.

    Args:
        pred: Predictions, shape ``(n, d_out)``.
        target: Targets of the same shape.

    Returns:
        A float32 scalar.
    """
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"pred and target must have the same shape, got {jnp.shape(pred)} and "
            f"{jnp.shape(target)}"
        )
    diff = jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)
    return jnp.sqrt(jnp.mean(jnp.square(diff)))
