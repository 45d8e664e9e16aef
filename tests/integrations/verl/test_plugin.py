"""The plug-in reaches verl through verl's own loading mechanisms, in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("verl", reason="needs pip install 'spo-rl[verl]' (make test-verl)")

from spo.integrations.verl import version as plugin_version

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, verl
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
est = ADV_ESTIMATOR_REGISTRY.get("single_stream_spo")
tr = TRAINER_REGISTRY.get("single_stream_spo")
print(json.dumps({
    "estimator": None if est is None else est.__module__ + "." + est.__name__,
    "trainer": None if tr is None else tr.__module__ + "." + tr.__name__,
    "spo_name_free": "spo" not in ADV_ESTIMATOR_REGISTRY,
}))
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    env.update(extra)
    return env


SETUPS = {  # how verl is told about plug-ins -> the environment of a fresh process
    "entry_point": _env(),  # plain `import verl`: verl loads `verl.plugins` entry points
    "external_modules": _env(
        VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="spo.integrations.verl"
    ),
    "plugins_off": _env(VERL_USE_EXTERNAL_PLUGINS="none"),
}


@pytest.fixture(scope="module")
def probes() -> dict:
    """What each setup registers, from fresh processes run side by side (imports are slow)."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE],
            env=env,
            cwd="/",
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, env in SETUPS.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


def test_entry_point_registers_in_a_fresh_process(probes):
    got = probes["entry_point"]
    assert got["estimator"] == "spo.integrations.verl.estimator.single_stream_spo_advantage"
    assert got["trainer"] == "spo.integrations.verl.trainer.SPOTrainer"
    assert got["spo_name_free"]  # the Segment-PO name is left to its owners


def test_external_modules_variable_loads_it_without_entry_points(probes):
    got = probes["external_modules"]
    assert got["estimator"] and got["trainer"]


def test_nothing_registers_when_verl_loads_no_plugins(probes):
    got = probes["plugins_off"]  # so the names above came from those mechanisms
    assert got["estimator"] is None and got["trainer"] is None


def test_other_verl_versions_get_one_clear_error(monkeypatch):
    monkeypatch.setattr(plugin_version, "installed_verl", lambda: "0.8.0")
    with pytest.raises(plugin_version.UnsupportedVerlError) as e:
        plugin_version.require_supported_verl()
    msg = str(e.value)
    assert "\n" not in msg and "0.8.0" in msg and "pip install 'spo-rl[verl]'" in msg
    for v in plugin_version.SUPPORTED_VERL:
        assert v in msg


def test_installed_verl_is_a_supported_one():
    assert plugin_version.require_supported_verl() in plugin_version.SUPPORTED_VERL


def test_extra_pins_exactly_the_supported_versions():
    from packaging.requirements import Requirement

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    req = Requirement(meta["optional-dependencies"]["verl"][0])
    assert req.name == "verl" and req.extras == {"verl-core"}
    tested = plugin_version.SUPPORTED_VERL
    assert all(req.specifier.contains(v) for v in tested)
    neighbours = ["0.8.0", "0.9.2", "0.10.0", "1.0.0"]
    assert not any(req.specifier.contains(v) for v in neighbours if v not in tested)
    assert meta["entry-points"]["verl.plugins"] == {"spo_rl": "spo.integrations.verl"}
