"""The task methods' arguments are their options: the shared keywords are written once (typed
dictionaries for ``**kwargs: Unpack[...]``), and they, the signatures ``help()`` shows and the options
dataclasses agree, name for name and type for type."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from multidiffusion import MultiDiffusion
from multidiffusion.options import TASK_OPTIONS
from multidiffusion.options.arguments import CALL_ARGUMENTS

DERIVED = {"upscale": {"height", "width"}, "outpaint": {"height", "width"}}
"""Options a task derives from its input (stored settings carry them; the method does not take them)."""


def method_and_keywords(task: str) -> tuple[inspect.Signature, type]:
    method = getattr(MultiDiffusion, task)
    kwargs = inspect.signature(method.__wrapped__).parameters["kwargs"].annotation
    keywords = typing.get_type_hints(method.__wrapped__, include_extras=True, localns={"Unpack": typing.Unpack})
    return inspect.signature(method), typing.get_args(keywords["kwargs"])[0] if kwargs else None


@pytest.mark.parametrize("task", sorted(TASK_OPTIONS))
def test_every_option_is_an_argument_and_every_argument_an_option(task):
    options = TASK_OPTIONS[task]
    fields = {f.name: f for f in dataclasses.fields(options) if f.init}
    signature, keywords = method_and_keywords(task)
    params = dict(signature.parameters)
    params.pop("self")
    assert set(params) == (set(fields) - {"seed"} - DERIVED.get(task, set())) | set(CALL_ARGUMENTS)
    option_types = typing.get_type_hints(options)
    for name, typ in typing.get_type_hints(keywords).items():
        if name not in CALL_ARGUMENTS:
            assert typ == option_types[name], f"{task}: {name} is {typ} here, {option_types[name]} in the options"
    for name, param in params.items():  # help() shows the options' defaults
        if name in fields and param.default is not inspect.Parameter.empty:
            assert param.default == fields[name].default, f"{task}: {name}"
    shared = [p for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert {p.name for p in shared} == set(typing.get_type_hints(keywords))


def test_help_shows_every_argument():
    text = inspect.getdoc(MultiDiffusion.upscale) or ""
    shown = str(inspect.signature(MultiDiffusion.upscale))
    assert "noise_inversion" in shown and "num_inference_steps: 'int | None' = None" in shown
    assert "control_guidance_end" in shown and "generator" in shown and "upscaler" in text


def test_an_argument_the_task_does_not_take_is_a_type_error(md16):
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_inference_step'"):
        md16.panorama("x", num_inference_step=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'seed'"):  # the shells' setting, not the API's
        md16.panorama("x", seed=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'placement'"):  # not a region layout's
        md16.regions(background="x", placement="shifted")
