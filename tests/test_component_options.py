"""Options of the chosen model and initializer as dotted flags, valid names from the component."""

from __future__ import annotations

import inspect
import json

import jax
import numpy as np
import pytest

from tests.conftest import run_cli
from transfusion_jax.cli_flags import parse_command_line
from transfusion_jax.config import ConfigError, base_config
from transfusion_jax.init import INITIALIZERS
from transfusion_jax.models import MODELS
from transfusion_jax.train.component_options import check_options, valid_options


def _parse(tmp_path, *flags):
    return parse_command_line(["main", "--config=configs/quickstart.py:smoke",
                               f"--workdir={tmp_path / 'run'}", *flags])[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_valid_model_options_are_the_constructor_keywords(name):
    params = inspect.signature(MODELS[name]).parameters
    # dtype and conv_impl are model keys of their own (model.dtype, model.conv_impl)
    expected = {p for p in params if p not in ("num_classes", "dtype", "conv_impl")}
    assert set(valid_options("model", name)) == expected


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_valid_init_options_are_the_strategy_keywords(name):
    params = inspect.signature(INITIALIZERS[name]).parameters
    expected = {p for p in params if p not in ("rng", "template", "source", "blocks")}
    assert set(valid_options("init", name)) == expected


def test_dotted_option_flags_are_typed_by_the_component(tmp_path):
    c = _parse(tmp_path, "--config.init.name=transfusion", "--config.init.options.k=2",
               "--config.model.options.width=0.5", "--config.model.options.kernel", "3")
    assert c.init.options.k == 2 and isinstance(c.init.options.k, int)
    assert c.model.options.width == 0.5 and c.model.options.kernel == 3
    c = _parse(tmp_path, "--config.init.name=mean_var",
               "--config.init.options.dont_load=('^head/',)",
               "--config.init.options.per=channel", "--config.model.name=resnet18",
               "--config.model.options.zero_init_residual=true")
    assert c.init.options.dont_load == ("^head/",) and c.init.options.per == "channel"
    assert c.model.options.zero_init_residual is True
    # The whole-dict form still works.
    c = _parse(tmp_path, "--config.init.name=transfusion", "--config.init.options={'k': 3}")
    assert c.init.options.k == 3
    # A composition: one dict per strategy.
    c = _parse(tmp_path, "--config.init.name=random+gabor", "--config.init.options={}",
               "--config.init.options.gabor.orientations=4",
               "--config.init.options.random.scheme=lecun_normal")
    assert c.init.options.gabor.orientations == 4
    assert c.init.options.random.scheme == "lecun_normal"


def test_option_errors_list_the_components_options(tmp_path):
    with pytest.raises(ConfigError, match=r"initializer 'gabor' has no option 'orientation' "
                                          r"\(did you mean 'orientations'\?\); its options: "
                                          r"frequencies, orientations, phases, rest, scheme, "
                                          r"sigma"):
        _parse(tmp_path, "--config.init.name=gabor", "--config.init.options.orientation=4")
    with pytest.raises(ConfigError, match="composes"):
        _parse(tmp_path, "--config.init.name=random+gabor", "--config.init.options={}",
               "--config.init.options.sigma=0.2")
    with pytest.raises(ConfigError, match="expects a tuple"):
        _parse(tmp_path, "--config.init.name=pretrained", "--config.init.options.dont_load=3")
    # Options a config file sets are checked too (before training).
    config = base_config()
    config.model.options.widht = 0.5
    with pytest.raises(ConfigError, match="model.options.widht: model 'cbr_tiny' has no "
                                          "option 'widht'"):
        check_options(config)
    config = base_config()
    config.model.name = "resnet18"
    config.model.options.width = 0.5  # a CBR option left over after switching the model
    with pytest.raises(ConfigError, match="its options: widths, zero_init_residual"):
        check_options(config)


def test_dotted_init_options_through_the_real_command_line(data_dir, finished_run, tmp_path):
    """``--config.init.options.k=2``: transfusion of the first two blocks of a finished run."""
    from transfusion_jax.weights import read_orbax_variables

    workdir = tmp_path / "run"
    proc = run_cli(workdir, data_dir, "--config.init.name=transfusion",
                   "--config.init.options.k=2", f"--config.init.source={finished_run}",
                   "--config.train.steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((workdir / "checkpoints" / "0" / "meta" / "metadata").read_text())
    assert meta["config"]["init"]["options"]["k"] == 2
    start = read_orbax_variables(workdir / "checkpoints" / "0")["params"]
    source = read_orbax_variables(finished_run / "checkpoints" / "12")["params"]
    for block in ("block1", "block2", "block3"):
        same = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(start[block]), jax.tree.leaves(source[block]), strict=True))
        assert same == (block != "block3"), block
