"""Every segmentation option is declared once (``SegmentOptions``) and every front end offers exactly those."""

from __future__ import annotations

import ast
import dataclasses
import inspect

from LiverTumorSegLib.cli import build_parser
from LiverTumorSegLib.options import DEVICES, PRECISIONS, SegmentOptions
from LiverTumorSegLib.pipeline import run_segmentation

from test_slicer_glue import PARAMETERS, WIDGET, parameter_fields, parse

FIELDS = {f.name for f in dataclasses.fields(SegmentOptions)}
#: segment-command arguments that are about files and output, not about how to segment
CLI_ONLY = {"inputs", "output", "model", "progress", "overwrite", "quiet", "debug", "allow_incomplete_series",
            "func", "command", "help"}


def _segment_parser():
    parser = build_parser(with_plugins=False)
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["segment"]


def test_the_pipeline_takes_exactly_the_options():
    params = set(inspect.signature(run_segmentation).parameters) - {"image", "model", "progress", "modality"}
    assert params == FIELDS


def test_the_command_line_offers_exactly_the_options():
    dests = {a.dest for a in _segment_parser()._actions} - CLI_ONLY
    assert dests == FIELDS


def test_the_module_gui_sets_every_option():
    """Each option names the module parameters that set it; they exist, and the widget passes the option."""
    fields = parameter_fields()
    for option, parameters in SegmentOptions.gui_parameters().items():
        assert parameters and set(parameters) <= set(fields), (option, parameters)
    run_options = next(n for n in ast.walk(parse(WIDGET)) if isinstance(n, ast.FunctionDef) and n.name == "_runOptions")
    passed = {k.value for n in ast.walk(run_options) if isinstance(n, ast.Dict) for k in n.keys
              if isinstance(k, ast.Constant)}
    passed |= {k.arg for n in ast.walk(run_options) if isinstance(n, ast.Call) for k in n.keywords if k.arg}
    passed |= {n.slice.value for n in ast.walk(run_options) if isinstance(n, ast.Subscript)
               and isinstance(n.slice, ast.Constant)}
    assert FIELDS - {"region"} <= passed and {"roiNode", "sliceRange"} <= passed  # the region comes from these


def test_the_modules_choices_are_the_cores():
    tree = parse(PARAMETERS)
    values = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and t.id in ("DEVICES", "PRECISIONS")}
    assert values == {"DEVICES": DEVICES, "PRECISIONS": PRECISIONS}


def test_options_round_trip_through_the_command_line():
    options = SegmentOptions(device="cpu", thresholds=(0.4, 0.3), keep_labels=("Liver",), use_localizer=False)
    args = build_parser(with_plugins=False).parse_args(["segment", "x", "-o", "y", *options.to_argv()])
    assert SegmentOptions.from_args(args) == options
