"""What `diagnose` returns: the `Diagnosis`, with its table, JSON and figure.

Example:
    >>> d = empty_diagnosis([], "float32")
    >>> d.codes, d.phase, d.to_dict()["growth_rate"]
    ([], '', None)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from isometry.diagnosis._findings import Finding
from isometry._io import jsonable
from isometry.plot.diagnosis import diagnosis_figure
from isometry.spectrum._function import Spectrum
from isometry.spectrum._protocol import deprecated, summarize

__all__ = ["Diagnosis", "empty_diagnosis"]


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` measured (numpy arrays and floats) and the findings.

    Attributes:
      spectrum: the `Spectrum` of J = ∂x_L/∂x_0 (None if the forward pass is not finite).
      dtype: the dtype J was computed in.
      n_layers: L (0 for a function without layer stack).
      resolution_share: share of σ(J) below the dtype's resolution.
      float32_share: share of σ(J) below float32's resolution (what float32 would lose).
      chi_profile, chi_profile_stderr: χ_l for l = 0..L (stderr 0 when dense), or None.
      log10_sigma_quantiles: (3, L+1) 10/50/90% quantiles of log10 σ(J_l) (dense only).
      growth_rate, growth_rate_stderr: g and se(g) (nan without layer stack).
      phase: "ordered", "critical", "chaotic" or "" (no layer stack).
      depth_scale, depth_scale_stderr: ξ = 1/|g| (inf at g = 0) and se(g)/g².
      alphas, alpha_grads: {layer name: α_l} and {layer name: ∂loss/∂α_l}.
      layer_grad_norms: {layer or module name: ‖∂loss/∂θ‖} (stacked layers one by one).
      token_cosine, inverse_stable_rank, stable_rank, rank_one_residual: per depth (L+1,),
        or None when the stream is not a token sequence.
      attention_sigma, attention_ratio: (L, 2) mean top-two σ of the attention matrices of
        each layer and (L,) mean σ₂/σ₁, or None.
      theory: mean-field prediction when `mean_field=` was given (χ₁, ln χ₁, ξ, critical σ_w²).
      findings: the `Finding`s, in the order of `FINDING_CODES`.
    """

    spectrum: Spectrum | None
    dtype: str
    n_layers: int
    resolution_share: float
    float32_share: float
    chi_profile: np.ndarray | None
    chi_profile_stderr: np.ndarray | None
    log10_sigma_quantiles: np.ndarray | None
    growth_rate: float
    growth_rate_stderr: float
    phase: str
    depth_scale: float
    depth_scale_stderr: float
    alphas: dict
    alpha_grads: dict
    layer_grad_norms: dict
    token_cosine: np.ndarray | None
    inverse_stable_rank: np.ndarray | None
    stable_rank: np.ndarray | None
    rank_one_residual: np.ndarray | None
    attention_sigma: np.ndarray | None
    attention_ratio: np.ndarray | None
    theory: dict | None
    findings: tuple

    @property
    def codes(self) -> list[str]:
        """The codes of the findings."""
        return [f.code for f in self.findings]

    def to_dict(self) -> dict:
        """Everything as plain lists, floats and strings, strict-JSON-ready (NaN/Inf become
        None via `isometry._io.jsonable`): the spectrum as its `to_dict()` with every σ."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "spectrum":
                value = None if value is None else dict(
                    value.to_dict(), singular_values=np.asarray(value.singular_values))
            elif field.name == "findings":
                value = [f.to_dict() for f in value]
            out[field.name] = value
        return jsonable(out)

    def to_json(self) -> dict:
        """Deprecated: `to_dict()`."""
        deprecated("Diagnosis.to_json()", "to_dict()")
        return self.to_dict()

    def figure(self, title: str | None = None):
        """The four-panel figure (see `isometry.diagnosis_figure`)."""
        return diagnosis_figure(self, title)

    def table(self) -> str:
        """A plain-text report: the measurements, then the findings."""
        rows = []
        if self.spectrum is not None:
            s = summarize(self.spectrum)
            rows += [("chi of J", _g(s["chi"])), ("mean ln sigma", _g(s["mean_log"])),
                     ("std ln sigma", _g(s["std_log"])),
                     ("sigma max / min", f"{_g(s['sigma_max'])} / {_g(s['sigma_min'])}"),
                     ("share of sigma in [0.5, 2]", _g(s["isometry_share"])),
                     (f"share below {self.dtype} resolution", _g(self.resolution_share))]
        if self.phase:
            rows += [("layers", str(self.n_layers)),
                     ("ln chi per layer", f"{_g(self.growth_rate)} ± {_g(self.growth_rate_stderr)}"),
                     ("phase", self.phase),
                     ("depth scale xi (layers)", f"{_g(self.depth_scale)} ± "
                                                 f"{_g(self.depth_scale_stderr)}")]
        if self.theory:
            rows += [("mean field chi_1", _g(self.theory["chi_1"])),
                     ("mean field xi", _g(self.theory["depth_scale"]))]
        if self.alphas:
            a = np.array([np.mean(v) for v in self.alphas.values()])
            ga = np.array([np.mean(np.abs(v)) for v in self.alpha_grads.values()])
            rows += [("alpha min / max", f"{_g(a.min())} / {_g(a.max())}"),
                     ("|dL/dalpha| min / max", f"{_g(ga.min())} / {_g(ga.max())}")]
        if self.token_cosine is not None:
            rows += [("token cosine x_0 -> x_L",
                      f"{_g(self.token_cosine[0])} -> {_g(self.token_cosine[-1])}"),
                     ("stable rank x_0 -> x_L",
                      f"{_g(self.stable_rank[0])} -> {_g(self.stable_rank[-1])}")]
        if self.attention_ratio is not None:
            rows += [("attention sigma2/sigma1 (mean)", _g(float(np.mean(self.attention_ratio))))]
        width = max(len(r[0]) for r in rows) if rows else 0
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines.append("")
        if not self.findings:
            lines.append("findings: none (no problem found)")
        for f in self.findings:
            lines.append(f"[{f.code}] {f.message}")
            lines.append(f"    -> {f.suggestion}")
        return "\n".join(lines)


def _g(x) -> str:
    x = float(x)
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def empty_diagnosis(findings, dtype: str) -> Diagnosis:
    """A diagnosis that measured nothing (the output was not finite): only the findings."""
    nan = math.nan
    return Diagnosis(None, dtype, 0, nan, nan, None, None, None, nan, nan, "", nan, nan, {}, {},
                     {}, None, None, None, None, None, None, None, tuple(findings))

