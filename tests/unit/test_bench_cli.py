"""``bench run`` arguments: either mode of a shipped scenario can be skipped."""

from __future__ import annotations

import pytest

from outlines_vllm.bench.cli import _run_scenario
from outlines_vllm.bench.scenario import Scenario
from outlines_vllm.cli import build_parser


def _scenario(*flags: str) -> Scenario:
    return _run_scenario(build_parser().parse_args(["bench", "run", "--scenario", "backends", *flags]))


def test_bench_run_skips_either_mode_of_the_shipped_scenario() -> None:
    shipped = Scenario.load("backends")
    assert _scenario().modes == shipped.modes == ["offline", "online"]
    assert _scenario("--online-only").modes == ["online"]
    assert _scenario("--offline-only").modes == ["offline"]
    assert _scenario("--online-only").backends == shipped.backends  # the rest stays the file's


def test_bench_run_refuses_skipping_both_modes(capsys) -> None:
    with pytest.raises(SystemExit):
        _scenario("--online-only", "--offline-only")
    assert "not allowed with argument" in capsys.readouterr().err
