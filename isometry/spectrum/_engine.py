"""Engine settings: which engine computes a spectrum and how, validated where they are written.

    iso.dense(mode="auto", chunk_size=None, memory_budget=None)
    iso.lanczos(k=10, rtol=1e-6, max_steps=256, num_steps=64, num_probes=8, chi_probes=64,
                bandwidth=0.04, top_run=True, block_size=None, memory_budget=None)
    iso.auto(dense=iso.dense(), lanczos=iso.lanczos(), max_dense_dim=4096)

Each returns a frozen, hashable settings object (the pattern of optax's aliases and matfree's
factories): an unknown name, a value of the wrong type or out of its range fails here, in one
line that names the setting and what it may be, never later and never silently.
`spectrum_fn(apply_fn, engine=...)`, `jacobian_spectrum`, `Tracker`, `train`, `diagnose` and
the command line (`--method`, `--k`, ...) take these objects; `method="dense" | "lanczos" |
"auto"` is the shorthand for the defaults (`engine_of`).

Step counts (`max_steps`, `num_steps`) count vectors: products with J (and as many with Jᵀ).

Example:
    >>> import isometry as iso
    >>> iso.lanczos(k=5, rtol=1e-8).k
    5
    >>> iso.lanczos(blok_size=4)
    Traceback (most recent call last):
    ...
    TypeError: lanczos has no setting 'blok_size' (did you mean block_size?); its settings: k, rtol, max_steps, num_steps, num_probes, chi_probes, bandwidth, top_run, block_size, memory_budget
    >>> iso.lanczos(k=0)
    Traceback (most recent call last):
    ...
    ValueError: k must be in [1, inf), got 0
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Callable, ClassVar, Union

from isometry._numerics import check_setting
from isometry.linalg._jacobian import MODES
from isometry.linalg._memory import memory_budget_of
from isometry.spectrum._lanczos_result import DEFAULT_BANDWIDTH

__all__ = ["Dense", "Lanczos", "Auto", "Engine", "dense", "lanczos", "auto", "engine_of",
           "dense_settings",
           "METHODS", "AUTO_DENSE_MAX_DIM"]

METHODS = ("auto", "dense", "lanczos")
#: `auto()` uses the dense engine while max(n_in, n_out) is at most this.
AUTO_DENSE_MAX_DIM = 4096


class _Settings:
    """What every engine's settings have: plain data (`to_dict`) and a readable repr."""

    def to_dict(self) -> dict:
        """{"engine": name, setting: value, ...} (nested for `auto`), strict-JSON-ready."""
        out = {"engine": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Settings) else value
        return out


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Dense(_Settings):
    """The dense engine: J by `jacfwd`/`jacrev`-style products, σ by an SVD of J.

    Attributes:
      mode: "fwd" (n_in JVPs), "rev" (n_out VJPs) or "auto" (the fewer products).
      chunk_size: at most this many products at once (bounds activation memory); None: all.
      memory_budget: bytes J with its SVD workspace may take (None: `DEFAULT_MEMORY_BUDGET`);
        above it the engine refuses before allocating anything.
    """

    name: ClassVar[str] = "dense"
    mode: str = "auto"
    chunk_size: int | None = None
    memory_budget: float | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_setting("chunk_size", self.chunk_size, low=1, integer=True, optional=True)
        memory_budget_of(self.memory_budget)


@dataclasses.dataclass(frozen=True)
class Lanczos(_Settings):
    """The matrix-free engine: Golub–Kahan runs on J's products (`isometry.lanczos_spectrum`).

    Attributes:
      k: top singular values certified by the top run (≤ max_steps).
      rtol: the top run stops when every error bound is ≤ rtol · θ_i, in (0, 1).
      max_steps: the top run's most vectors (capped at min(n_in, n_out) where it runs).
      num_steps: vectors of each density probe's run.
      num_probes: random probes of the density (stochastic Lanczos quadrature).
      chi_probes: Rademacher probes of the deflated Hutchinson estimate of χ (≥ 0).
      bandwidth: kernel width of the density, in decades of σ (> 0).
      top_run: False skips the top run (the top k are then the probes' largest Ritz values).
      block_size: vectors per Golub–Kahan step of the top run (None: chosen from the
        operator's cost); must divide max_steps.
      memory_budget: bytes the Krylov bases may take (None: `DEFAULT_MEMORY_BUDGET`).
    """

    name: ClassVar[str] = "lanczos"
    k: int = 10
    rtol: float = 1e-6
    max_steps: int = 256
    num_steps: int = 64
    num_probes: int = 8
    chi_probes: int = 64
    bandwidth: float = DEFAULT_BANDWIDTH
    top_run: bool = True
    block_size: int | None = None
    memory_budget: float | None = None

    def __post_init__(self):
        for name in ("k", "max_steps", "num_steps", "num_probes"):
            check_setting(name, getattr(self, name), low=1, integer=True)
        check_setting("chi_probes", self.chi_probes, low=0, integer=True)
        check_setting("rtol", self.rtol, low=0, high=1, low_open=True, high_open=True)
        check_setting("bandwidth", self.bandwidth, low=0, low_open=True)
        _check_bool("top_run", self.top_run)
        check_setting("block_size", self.block_size, low=1, integer=True, optional=True)
        memory_budget_of(self.memory_budget)
        if self.k > self.max_steps:
            raise ValueError(f"k must be at most max_steps = {self.max_steps}, got {self.k}")
        if self.block_size is not None and self.max_steps % self.block_size:
            raise ValueError(f"block_size must divide max_steps = {self.max_steps} (steps count "
                             f"vectors), got {self.block_size}")
        if not self.top_run and self.num_probes + self.chi_probes < 2:
            raise ValueError(f"without the top run, num_probes + chi_probes must be >= 2 (chi is "
                             f"sampled by the other probes), got {self.num_probes + self.chi_probes}")

    def options(self) -> dict:
        """The keyword arguments of `lanczos_spectrum` these settings stand for."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "memory_budget"}


@dataclasses.dataclass(frozen=True)
class Auto(_Settings):
    """Dense while max(n_in, n_out) ≤ `max_dense_dim`, matrix-free above.

    Attributes:
      dense: the dense engine's settings.
      lanczos: the matrix-free engine's settings.
      max_dense_dim: the switch, ≥ 1.
    """

    name: ClassVar[str] = "auto"
    dense: Dense = Dense()
    lanczos: Lanczos = Lanczos()
    max_dense_dim: int = AUTO_DENSE_MAX_DIM

    def __post_init__(self):
        for name, kind in (("dense", Dense), ("lanczos", Lanczos)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"auto's {name} must be iso.{name}(...), got "
                                f"{type(getattr(self, name)).__name__}")
        check_setting("max_dense_dim", self.max_dense_dim, low=1, integer=True)

    def pick(self, n_in: int, n_out: int) -> Dense | Lanczos:
        """The engine that runs for a Jacobian of n_out × n_in."""
        return self.dense if max(n_in, n_out) <= self.max_dense_dim else self.lanczos


Engine = Union[Dense, Lanczos, Auto]
_ENGINES = {"dense": Dense, "lanczos": Lanczos, "auto": Auto}


def _factory(cls) -> Callable:
    """`cls`'s keyword-only constructor that names an unknown setting and the valid ones."""
    fields = [f.name for f in dataclasses.fields(cls)]

    def make(**settings):
        unknown = [name for name in settings if name not in fields]
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(f"{cls.name} has no setting {unknown[0]!r}{hint}; its settings: "
                            f"{', '.join(fields)}")
        return cls(**settings)

    make.__name__ = make.__qualname__ = cls.name
    make.__doc__ = f"Validated settings of the {cls.name} engine (`{cls.__name__}`).\n\n" + \
        (cls.__doc__ or "").split("\n\n", 1)[-1]
    make.__signature__ = inspect.Signature(
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
         for p in inspect.signature(cls).parameters.values()])
    return make


dense = _factory(Dense)
lanczos = _factory(Lanczos)
auto = _factory(Auto)


def engine_of(method: str | Engine = "auto", **settings) -> Engine:
    """The engine a `method` shorthand stands for, with `settings` applied (validated).

    `method` is "dense", "lanczos", "auto" or an engine object (then no settings). With
    "auto", a setting goes to the engine that has it (`memory_budget` to both).

    Example:
      >>> engine_of("lanczos", k=3).k, engine_of("auto", chunk_size=8).dense.chunk_size
      (3, 8)
    """
    if isinstance(method, (Dense, Lanczos, Auto)):
        if settings:
            raise TypeError(f"pass settings to the engine object itself (iso.{method.name}("
                            f"{', '.join(f'{k}=...' for k in settings)})), not beside it")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)} or an "
                         f"engine object (iso.dense(...), iso.lanczos(...), iso.auto(...))")
    if method != "auto":
        return _factory(_ENGINES[method])(**settings)
    return _auto_of(settings)


def dense_settings(engine: Engine | str | None, memory_budget: float | None, who: str) -> Dense:
    """The dense settings of a caller that measures dense spectra where they fit the budget
    (`diagnose`, `tune_init`): from `engine` (an `auto` gives its dense part) or the
    `memory_budget` shorthand; TypeError for both at once or a matrix-free engine."""
    if engine is not None and memory_budget is not None:
        raise TypeError("pass memory_budget inside the engine (iso.dense(memory_budget=...)), "
                        "not beside it")
    engine = engine_of("dense" if engine is None else engine,
                       **({} if memory_budget is None else {"memory_budget": memory_budget}))
    if isinstance(engine, Auto):
        return engine.dense
    if not isinstance(engine, Dense):
        raise TypeError(f"{who} takes the dense engine's settings (iso.dense(...) or "
                        f"iso.auto(...)): it measures dense spectra where they fit the memory "
                        f"budget; got iso.{engine.name}(...)")
    return engine


def _auto_of(settings: dict) -> Auto:
    d_names = {f.name for f in dataclasses.fields(Dense)}
    l_names = {f.name for f in dataclasses.fields(Lanczos)}
    own = {k: settings.pop(k) for k in ("max_dense_dim", "auto_dense_max_dim") if k in settings}
    unknown = sorted(set(settings) - d_names - l_names)
    if unknown:
        everything = sorted(d_names | l_names | {"max_dense_dim"})
        close = difflib.get_close_matches(unknown[0], everything, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TypeError(f"no engine has a setting {unknown[0]!r}{hint}; the settings: "
                        f"{', '.join(everything)}")
    d = Dense(**{k: v for k, v in settings.items() if k in d_names})
    lz = Lanczos(**{k: v for k, v in settings.items() if k in l_names})
    return Auto(d, lz, own.get("max_dense_dim", own.get("auto_dense_max_dim", AUTO_DENSE_MAX_DIM)))
