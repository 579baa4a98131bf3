"""The lab's domain records validate themselves once, with messages that say what is allowed."""

import math

import pytest
from pydantic import ValidationError

from sdl.experiment import Composition, DesignPoint, ExperimentSpec, ProcessStep


def test_composition_accepts_a_valid_alloy():
    c = Composition({"Ni": 0.75, "Al": 0.15, "Cr": 0.1})
    assert c["Ni"] == 0.75


@pytest.mark.parametrize(
    "fractions, fragment",
    [
        ({"Ni": 0.5, "Xx": 0.5}, "unknown element symbol"),
        ({"Ni": 1.2, "Al": -0.2}, "must lie in \\[0, 1\\]"),
        ({"Ni": 0.5, "Al": 0.4}, "sum to 0.9"),
        ({"Ni": 0.5, "Al": 0.5 + 2e-6}, "must sum to 1 within 1e-06"),
        ({}, "at least one element"),
        ({"Ni": math.nan, "Al": 1.0}, "must lie in"),
    ],
)
def test_composition_rejects(fractions, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Composition(fractions)


def test_composition_tolerates_rounding_within_1e_6():
    Composition({"Ni": 0.7, "Al": 0.3 + 5e-7})


def test_process_step_has_units_in_its_names_and_refuses_others():
    step = ProcessStep(operation="age", temperature_k=1023.0, duration_s=3600.0)
    assert step.temperature_k == 1023.0
    with pytest.raises(ValidationError, match="temperature_c"):
        ProcessStep.model_validate({"operation": "age", "temperature_c": 750, "duration_s": 10})
    with pytest.raises(ValidationError, match="greater than 0"):
        ProcessStep(operation="age", temperature_k=-5.0, duration_s=1.0)


def test_experiment_spec_nests_validation():
    with pytest.raises(ValidationError, match="sum to"):
        ExperimentSpec.model_validate(
            {"experiment_id": "e1", "campaign_id": "c", "point": {"composition": {"Ni": 0.6, "Al": 0.6}}}
        )
    with pytest.raises(ValidationError, match="finite"):
        DesignPoint(parameters={"x": math.inf})


def test_temperatures_with_units_are_converted_and_bare_strings_refused():
    assert ProcessStep(operation="age", temperature_k="827 °C", duration_s=1).temperature_k == pytest.approx(1100.15)
    assert ProcessStep(operation="age", temperature_k="827 C", duration_s=1).temperature_k == pytest.approx(1100.15)
    assert ProcessStep(operation="age", temperature_k="1100 K", duration_s=1).temperature_k == 1100.0
    with pytest.raises(ValidationError, match="ambiguous; give kelvin as a number"):
        ProcessStep(operation="age", temperature_k="1100", duration_s=1)
    with pytest.raises(ValidationError, match="temperature"):
        ProcessStep.model_validate({"operation": "age", "temperature": 1100, "duration_s": 1})
