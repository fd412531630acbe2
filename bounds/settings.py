"""The options of a bound evaluation, checked once: `BoundSettings` and its `CertificateSettings`.

Every reader of a run's bounds (`bounds.report.evaluate_run`, `bounds.compression`, `bounds.curves`) and
the one writer of ``bounds.json`` (`bounds.report.write_bounds`) take a `BoundSettings`; its `to_dict` is
the ``settings`` object of ``bounds.json``. Both records are frozen and keyword-only, and reject a bad
value with a message naming the field and the value (`bounds.validation`). Options are the str enums of
`bounds.runlog` (``Space``, ``BoundPredictor``, ``Hypothesis``) and `bounds.formulas.Lemma43Form`; each
field also accepts the plain string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .estimators import LIPSCHITZ_QUANTITIES
from .formulas import Lemma43Form
from .runlog import DEFAULT_POSTERIOR_STD_GRID, BoundPredictor, Hypothesis, Space
from .validation import check_array, check_option

__all__ = ["HYPOTHESIS_PREDICTORS", "BoundSettings", "CertificateSettings"]

#: The predictor whose risks the reports of each hypothesis use by default: the unmasked model's ``full``
#: rows, or the ``deterministic`` rows, which are the expected predictor unless the run's eval_mode is
#: ``full`` (then the run does not log it: see `bounds.report`'s ``expected_scale`` input).
HYPOTHESIS_PREDICTORS = {Hypothesis.UNMASKED: BoundPredictor.FULL, Hypothesis.EXPECTED: BoundPredictor.DETERMINISTIC}


def _number(name: str, value: Any, **limits: Any) -> float:
    return float(check_array(name, value, **limits))


def _optional_number(name: str, value: Any, **limits: Any) -> float | None:
    return None if value is None else _number(name, value, **limits)


def _optional_int(name: str, value: Any, low: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"{name} must be an integer{'' if low is None else f' >= {low}'}, got {value!r}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class CertificateSettings:
    """What a run's ``certificates.parquet`` was measured with (``lora-dropout certify``'s options).

    Only the grid enters the reports: the certificate's ``grid_fixed_in_advance`` audit holds the table's
    grid against it (`bounds.report.certificate_reports`). The other fields are a record, written into
    ``bounds.json``'s ``settings["certificate"]``; None where not known (e.g. ``lora-dropout bounds
    --posterior-std-grid`` knows only the grid).

    Attributes
    ----------
    posterior_std_grid : tuple of float
        The ``posterior_std`` grid given to ``certify`` (default
        `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`); each entry finite and > 0.
    posterior_draws : int, optional
        ``k``, posterior samples per example.
    delta, delta_mc : float, optional
        Failure probabilities of the certificate and of its Monte Carlo term, in (0, 1).
    prior : str, optional
        ``init`` or ``trained``.
    seed : int, optional
        Root of the posterior noise.
    """

    posterior_std_grid: tuple[float, ...] = DEFAULT_POSTERIOR_STD_GRID
    posterior_draws: int | None = None
    delta: float | None = None
    delta_mc: float | None = None
    prior: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        grid = self.posterior_std_grid
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
            raise ValueError(f"posterior_std_grid must be a sequence of numbers > 0, got {grid!r}")
        grid = tuple(float(v) for v in check_array("posterior_std_grid", list(grid), low=0.0, open_low=True))
        if not grid:
            raise ValueError("posterior_std_grid must hold at least one value, got ()")
        object.__setattr__(self, "posterior_std_grid", grid)
        object.__setattr__(self, "posterior_draws", _optional_int("posterior_draws", self.posterior_draws, 1))
        for name in ("delta", "delta_mc"):
            object.__setattr__(self, name, _optional_number(name, getattr(self, name), low=0.0, high=1.0,
                                                            open_low=True, open_high=True))
        if self.prior is not None and not isinstance(self.prior, str):
            raise ValueError(f"prior must be a string (init or trained), got {self.prior!r}")
        object.__setattr__(self, "prior", getattr(self.prior, "value", self.prior))  # a str enum: its string
        object.__setattr__(self, "seed", _optional_int("seed", self.seed))

    def to_dict(self) -> dict[str, Any]:
        """``bounds.json``'s ``settings["certificate"]`` (the grid as a list; None where not known)."""
        return {"posterior_std_grid": list(self.posterior_std_grid), "posterior_draws": self.posterior_draws,
                "delta": self.delta, "delta_mc": self.delta_mc, "prior": self.prior, "seed": self.seed}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CertificateSettings:
        """The settings `to_dict` wrote (keys it does not know are refused, missing ones are None)."""
        unknown = sorted(set(record) - {"posterior_std_grid", "posterior_draws", "delta", "delta_mc", "prior",
                                        "seed"})
        if unknown:
            raise ValueError(f"certificate settings: unknown field(s) {unknown}")
        return cls(**{"posterior_std_grid": DEFAULT_POSTERIOR_STD_GRID, **record})


@dataclass(frozen=True, kw_only=True)
class BoundSettings:
    """How the bounds of a run are evaluated (`bounds.report.evaluate_run`), and what ``bounds.json`` records.

    Attributes
    ----------
    delta : float
        Failure probability of the risk bounds, in (0, 1).
    lam : float
        ``lambda`` of Prop. 4.2 / Thm 4.4, finite and >= 0 (arbitrary in the paper; compare with the
        ``lam_eff`` diagnostic).
    loss_range : float, optional
        ``C`` > 0. Given: all risks and ``beta_hat`` use the loss clipped at ``C`` (rigorous). Default: the
        observed maximum loss at the final step, no clipping (heuristic, labelled so).
    lipschitz : {"max", "q99"}
        Which probe row is ``eta``: ``lipschitz_max`` or ``lipschitz_q99``.
    space : {"delta_w", "factors"}
        Parameter space of the probes.
    predictor : {"full", "deterministic", "member_mean", "ensemble"}, optional
        Whose ``R_hat`` and ``R`` the risk bounds (Lemma 4.3, Thm 4.4, B&E Thm 12) use. Default: the
        hypothesis's own (`predictor_for`): ``full`` (the unmasked model, theta(S), whose curvature and
        stability the probes measure) or, at ``hypothesis="expected"``, ``deterministic`` (checked to be the
        expected predictor: a run with eval_mode ``full`` does not log it). The ensemble report always uses
        the ensemble's test risk and the member-mean training risk.
    form : {"printed", "corrected"}
        Constant of Lemma 4.3; ``corrected`` needs ``beta_1`` (see the ``lemma43`` report's reason).
    stability_method : str, optional
        Leave-one-out method plugged into Lemma 4.3 and B&E Thm 12 (default: retrain, else warm_start,
        else influence). Prop. 4.2 is reported for every method present.
    hypothesis : tuple of {"unmasked", "expected"}
        The predictors whose probes (probes.parquet's ``hypothesis`` rows) and risks the bounds use, each
        one's reports in turn; a single value is taken as a one-element tuple, repeats are dropped.
        ``unmasked`` (default): every report. ``expected`` (every ``dW`` times its training mean; ``lora-dropout
        probe RUN_DIR --curvature --hypothesis expected``): only ``prop42[expected]`` (Prop. 4.2's ``beta``;
        no ``beta_hat`` to hold it against: stability.parquet is leave-one-out of the unmasked model) and
        ``theorem44[expected]``.
    certificate : CertificateSettings, optional
        What ``certificates.parquet`` was measured with; its grid is the one the certificate's
        ``grid_fixed_in_advance`` audit is held against (default: `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`).
        Used only when the run has ``certificates.parquet``.
    """

    delta: float = 0.05
    lam: float = 1.0
    loss_range: float | None = None
    lipschitz: str = "max"
    space: Space = Space.DELTA_W
    predictor: BoundPredictor | None = None
    form: Lemma43Form = Lemma43Form.PRINTED
    stability_method: str | None = None
    hypothesis: tuple[Hypothesis, ...] = field(default=(Hypothesis.UNMASKED,))
    certificate: CertificateSettings | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "delta", _number("delta", self.delta, low=0.0, high=1.0, open_low=True, open_high=True))
        put(self, "lam", _number("lam", self.lam, low=0.0))
        put(self, "loss_range", _optional_number("loss_range", self.loss_range, low=0.0, open_low=True))
        if self.lipschitz not in LIPSCHITZ_QUANTITIES:
            raise ValueError(f"lipschitz={self.lipschitz!r} is not one of {tuple(LIPSCHITZ_QUANTITIES)}")
        put(self, "space", check_option(Space, "space", self.space))
        if self.predictor is not None:
            put(self, "predictor", check_option(BoundPredictor, "predictor", self.predictor))
        put(self, "form", check_option(Lemma43Form, "form", self.form))
        if self.stability_method is not None and not (isinstance(self.stability_method, str)
                                                      and self.stability_method):
            raise ValueError(f"stability_method must be a non-empty string, got {self.stability_method!r}")
        hypotheses = (self.hypothesis,) if isinstance(self.hypothesis, str) else tuple(self.hypothesis)
        if not hypotheses:
            raise ValueError("hypothesis: give at least one of " + ", ".join(h.value for h in Hypothesis))
        put(self, "hypothesis", tuple(dict.fromkeys(check_option(Hypothesis, "hypothesis", h) for h in hypotheses)))
        if self.certificate is not None and not isinstance(self.certificate, CertificateSettings):
            raise ValueError(f"certificate must be a CertificateSettings or None, got {self.certificate!r}")

    @property
    def lipschitz_quantity(self) -> str:
        """The ``quantity`` of probes.parquet that holds ``eta`` (``lipschitz_max`` or ``lipschitz_q99``)."""
        return LIPSCHITZ_QUANTITIES[self.lipschitz]

    @property
    def posterior_std_grid(self) -> tuple[float, ...] | None:
        """The grid of the certificate's audit; None: the default grid."""
        return None if self.certificate is None else self.certificate.posterior_std_grid

    def predictor_for(self, hypothesis: Hypothesis | str) -> BoundPredictor:
        """The predictor whose risks the reports at ``hypothesis`` use: ``predictor``, else the hypothesis's own."""
        return self.predictor or HYPOTHESIS_PREDICTORS[check_option(Hypothesis, "hypothesis", hypothesis)]

    def to_dict(self) -> dict[str, Any]:
        """``bounds.json``'s ``settings``: every option as plain JSON (enums as their strings)."""
        def plain(value: Any) -> Any:
            return value.value if hasattr(value, "value") else value

        return {
            "delta": self.delta, "lam": self.lam, "loss_range": self.loss_range, "lipschitz": self.lipschitz,
            "space": plain(self.space), "predictor": plain(self.predictor), "form": plain(self.form),
            "stability_method": self.stability_method, "hypothesis": [plain(h) for h in self.hypothesis],
            "certificate": None if self.certificate is None else self.certificate.to_dict(),
        }

