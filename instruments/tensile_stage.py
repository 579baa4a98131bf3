"""A simulated tensile stage with an extensometer or digital image correlation (DIC) on layered or graded
bars (:mod:`sdl.env.layered_bar`).

The stage clamps the bar at z = 0, applies ``load_n`` at z = L and reads the axial displacement at its
sensor positions, each reading with Gaussian noise of sd ``noise_fraction`` x the end displacement
(DIC's noise floor is a fixed fraction of a pixel, so of the field of view, not of each reading).
It reports, per sensor, ``sensor_NN_position_mm`` and ``sensor_NN_displacement_mm``, the bar's
``length_mm`` and ``area_mm2``, the load cell's ``force_n`` (unless ``force_readout`` is off: a stage
without a load cell), if ``report_noise`` its stated noise floor ``displacement_noise_sd_mm``, and
for a layered specimen the interfaces it was made with, ``nominal_interface_K_mm`` (the making
station's record: the analysis checks that the sensors cover every layer, and uses nothing more).

The specimen: the layers in ``layers`` (moduli and thicknesses), with any thickness the experiment's
design point sets as ``layer_K_thickness_mm`` (the making station's work); or, without ``layers``, a
random specimen within ``random`` (per experiment, seeded). A simulated specimen's true layers are
reported as ``truth_*`` measurements when ``report_truth`` is on (benchmarks); an analysis never
reads them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdl.env.layered_bar import (
    GradedBar,
    LayeredBar,
    random_graded_bar,
    random_layered_bar,
    sensors_per_layer,
    uniform_sensors,
)
from sdl.experiment import ExperimentSpec
from sdl.instruments.alloy_lab import SimulatedInstrument, SimulatedParameters
from sdl.instruments.base import InstrumentRefused


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modulus_gpa: float = Field(gt=0, le=2000)
    thickness_mm: float = Field(gt=0, le=10000)


class RandomSpecimens(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["layered", "graded"] = "layered"
    layers: int = Field(default=3, ge=1, le=12)
    length_mm: float = Field(default=30.0, gt=0)
    modulus_range_gpa: tuple[float, float] = (50.0, 400.0)
    min_contrast: float = Field(default=1.5, ge=1.0, description="stiffness ratio of neighbouring layers, at least")

    @model_validator(mode="after")
    def _range(self) -> RandomSpecimens:
        low, high = self.modulus_range_gpa
        if not 0 < low < high:
            raise ValueError(f"modulus_range_gpa [{low}, {high}]: 0 < low < high")
        return self


class TensileDicStage(SimulatedInstrument):
    name = "tensile_dic"
    implemented_measurements = ("length_mm", "area_mm2")  # and the sensors', force_n, truth_*: see the module
    allowed_faults = ("specimen_lost", "offline")

    class Parameters(SimulatedParameters):
        layers: list[Layer] | None = Field(default=None, min_length=1, description="the specimen's layers from the "
                                           "clamp; None: a random specimen within `random`")
        random: RandomSpecimens = RandomSpecimens()
        area_mm2: float = Field(default=10.0, gt=0)
        load_n: float = Field(default=1000.0, gt=0, le=1e7)
        force_readout: bool = Field(default=True, description="the stage has a load cell")
        sensors_per_layer: int | None = Field(default=3, ge=1, le=1000, description="gauge points in each layer, "
                                              "placed by the nominal layers (layered specimens)")
        dic_points: int | None = Field(default=None, ge=1, le=100000,
                                       description="a DIC grid of evenly spaced points instead of gauge points")
        noise_fraction: float = Field(default=0.01, ge=0, le=1, description="sd of a reading / the end displacement")
        report_noise: bool = Field(default=True, description="state the noise floor (displacement_noise_sd_mm)")
        report_truth: bool = Field(default=True, description="report the simulated specimen's true layers")
        test_time_s: float = Field(default=600.0, gt=0)

        @model_validator(mode="after")
        def _sensors(self) -> TensileDicStage.Parameters:
            if self.dic_points is None and (self.sensors_per_layer is None or
                                            (self.layers is None and self.random.kind == "graded")):
                raise ValueError("a graded or sensor-less specimen needs dic_points (gauge points go by layer)")
            return self

    def lab_time_s(self, experiment: ExperimentSpec) -> float:
        return self.parameters.test_time_s

    def check(self, experiment: ExperimentSpec) -> None:
        if self.parameters.layers is not None:  # only a designed thickness can be refused
            self._thicknesses(experiment)

    def _thicknesses(self, experiment: ExperimentSpec) -> list[float]:
        thicknesses = [experiment.point.parameters.get(f"layer_{k}_thickness_mm", layer.thickness_mm)
                       for k, layer in enumerate(self.parameters.layers, 1)]
        bad = [f"layer_{k}_thickness_mm={t}" for k, t in enumerate(thicknesses, 1) if not t > 0]
        if bad:
            raise InstrumentRefused(f"cannot make a bar with {', '.join(bad)}: thicknesses must be positive")
        return thicknesses

    def specimen(self, experiment: ExperimentSpec, rng: np.random.Generator) -> LayeredBar | GradedBar:
        p = self.parameters
        if p.layers is None:
            r = p.random
            if r.kind == "graded":
                return random_graded_bar(rng, length_mm=r.length_mm, modulus_range_gpa=r.modulus_range_gpa,
                                         min_contrast=r.min_contrast, area_mm2=p.area_mm2)
            return random_layered_bar(rng, layers=r.layers, length_mm=r.length_mm,
                                      modulus_range_gpa=r.modulus_range_gpa, min_contrast=r.min_contrast,
                                      area_mm2=p.area_mm2)
        return LayeredBar(tuple(layer.modulus_gpa for layer in p.layers), tuple(self._thicknesses(experiment)),
                          p.area_mm2)

    def simulate(self, experiment: ExperimentSpec, rng: np.random.Generator) -> dict[str, float]:
        p = self.parameters
        bar = self.specimen(experiment, rng)
        positions = (uniform_sensors(bar.length_mm, p.dic_points) if p.dic_points is not None
                     else sensors_per_layer(bar, p.sensors_per_layer))
        exact = bar.displacement_mm(positions, p.load_n)
        noise_sd = p.noise_fraction * float(bar.displacement_mm(np.array([bar.length_mm]), p.load_n)[0])
        readings = exact + rng.normal(0.0, noise_sd, len(positions)) if noise_sd else exact
        out = {"length_mm": bar.length_mm, "area_mm2": bar.area_mm2}
        if p.force_readout:
            out["force_n"] = p.load_n
        if p.report_noise:
            out["displacement_noise_sd_mm"] = noise_sd
        for i, (z, u) in enumerate(zip(positions, readings)):
            out[f"sensor_{i:02d}_position_mm"] = float(z)
            out[f"sensor_{i:02d}_displacement_mm"] = float(u)
        if isinstance(bar, LayeredBar):  # the layers it was made with: what a lab knows from making it
            out |= {f"nominal_interface_{k}_mm": float(z) for k, z in enumerate(bar.interfaces_mm, 1)}
        if p.report_truth:
            out |= truth_measurements(bar)
        return out


def truth_measurements(bar: LayeredBar | GradedBar) -> dict[str, float]:
    if isinstance(bar, GradedBar):
        return {"truth_modulus_start_gpa": bar.modulus_start_gpa, "truth_modulus_end_gpa": bar.modulus_end_gpa,
                "truth_grading_exponent": bar.exponent}
    out = {f"truth_layer_{k}_modulus_gpa": e for k, e in enumerate(bar.moduli_gpa, 1)}
    out |= {f"truth_layer_{k}_thickness_mm": h for k, h in enumerate(bar.thicknesses_mm, 1)}
    return out
