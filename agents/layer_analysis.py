"""The layer-analysis agent: a workflow station (driver ``layer_inversion``) that turns the tensile
station's raw displacements into each layer's Young's modulus and thickness, with standard deviations,
recorded in the ledger as the station's measurements.

A campaign's workflow then reads ``[tensile_dic, analyse]`` (or ``[make, tensile_dic, analyse]``): the
specimen reaches this station carrying what the stage measured (``sensor_NN_position_mm``,
``sensor_NN_displacement_mm``, ``force_n``, ``length_mm``, ``area_mm2``), and leaves with
``layer_K_modulus_gpa``, ``layer_K_modulus_sd_gpa``, ``layer_K_thickness_mm``, ``layer_K_thickness_sd_mm``,
``interface_K_mm`` (+ ``_sd``), ``effective_modulus_gpa`` and the fit's ``residual_sd_mm``; with
``method: both`` also the segmented least-squares fit's, prefixed ``segmented_``.

It serves the station through the instrument protocol rather than as a planner-like request/reply
agent: the loop already sends every specimen through its stations in order with exactly-once
journaling, so an analysis cut off by a crash is neither lost nor run twice, and its results are
committed like any measurement. It lives in ``agents/`` because it wraps a model (the PINN of
:mod:`sdl.surrogates.pinn_inverse`), which an instrument driver may not import.

A set-up the data cannot resolve (no force readout, too few sensors in a layer) is refused before any
fitting, and a fit that leaves a layer without its two points is recorded as a failed analysis with the
reason, instead of a confident wrong answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdl.experiment import ExperimentSpec
from sdl.instruments.base import Instrument, InstrumentFault, InstrumentParameters, InstrumentRefused
from sdl.surrogates.bar_inversion import BarData, LayerEstimate, NotIdentifiable, check_identifiable, segmented_fit
from sdl.surrogates.pinn_inverse import PinnSettings, invert_layers


def effective_modulus_gpa(estimate: LayerEstimate) -> float:
    """The bar's axial stiffness as one modulus: L / sum(h_l / E_l) (layers in series)."""
    return float(estimate.length_mm / (estimate.thicknesses_mm / estimate.moduli_gpa).sum())


class LayerInversionStation(Instrument):
    name = "layer_inversion"
    implemented_measurements = ("effective_modulus_gpa", "residual_sd_mm")

    class Parameters(InstrumentParameters):
        layers: int = Field(default=3, ge=1, le=12, description="layers to infer")
        method: Literal["pinn", "segmented", "both"] = Field(
            default="pinn", description="the PINN, the segmented least-squares fit, or both side by side")
        pinn: PinnSettings = PinnSettings()

    def check(self, experiment: ExperimentSpec) -> None:
        try:
            check_identifiable(self._data(experiment), self.parameters.layers)
        except NotIdentifiable as e:
            raise InstrumentRefused(f"cannot infer {self.parameters.layers} layers: {e}") from None

    def _data(self, experiment: ExperimentSpec) -> BarData:
        try:
            return BarData.from_measurements(experiment.specimen)
        except ValueError as e:
            raise InstrumentRefused(f"the layer inversion needs a tensile test before it in the workflow; {e}") from None

    def measure(self, experiment: ExperimentSpec, *, attempt: int) -> dict[str, float]:
        data = self._data(experiment)
        p = self.parameters
        out: dict[str, float] = {}
        try:
            if p.method in ("segmented", "both"):
                segmented = segmented_fit(data, p.layers)
                prefix = "segmented_" if p.method == "both" else ""
                out |= {prefix + k: v for k, v in segmented.measurements().items()}
                out[prefix + "effective_modulus_gpa"] = effective_modulus_gpa(segmented)
            if p.method in ("pinn", "both"):
                estimate = invert_layers(data, p.layers, p.pinn)
                out |= estimate.measurements()
                out["effective_modulus_gpa"] = effective_modulus_gpa(estimate)
                out["pde_residual"] = estimate.extra["pde_residual"]
                out["inversion_s"] = estimate.seconds
        except NotIdentifiable as e:
            raise InstrumentFault(f"layers not determined by the data: {e}") from None
        return out
