"""Every parameter of every job kind says what it does, and `imgsim jobs kinds` prints it."""

import dataclasses

import pytest

from imgsim.cli import main
from service.jobs.params import param_help
from service.jobs.registry import load_builtin_kinds

KINDS = load_builtin_kinds()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_parameter_has_a_one_line_description(name):
    fields = dataclasses.fields(KINDS[name].params)
    missing = [f.name for f in fields if not param_help(f).strip()]
    assert fields and not missing, f"{name}: no description for {missing}"
    assert all("\n" not in param_help(f) for f in fields)


def test_jobs_kinds_prints_each_parameter_with_its_type_default_and_description(capsys):
    assert main(["jobs", "kinds"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("tsne:"):]
    assert "perplexity: float = 30.0" in block and "neighbours" in block
    for kind in KINDS.values():
        for f in dataclasses.fields(kind.params):
            assert param_help(f) in out, (kind.name, f.name)
    assert "image: str (required)" in out and "methods: list of str = [" in out
