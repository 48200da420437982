"""Configs: presets load, bad configs fail naming the field, the instance table is the sweep."""

import tomllib

import pytest

from devtms.activations import ALL
from devtms.config import config_from_dict, instance_table, load_config, preset_names
from devtms.errors import UserError

from .conftest import TINY_TOML


def test_all_presets_load_and_round_trip():
    assert set(preset_names()) >= {"quick", "anthropic-intro", "devinterp-tms", "chen2023",
                                   "activations27"}
    for name in preset_names():
        config = load_config(name)
        assert config_from_dict(config.to_dict()) == config


def test_presets_match_their_published_setups():
    intro = load_config("anthropic-intro")
    assert (intro.model.n_features, intro.model.n_hidden, intro.train.steps) == (5, 2, 10000)
    assert len(intro.data.sparsity) == 10 and intro.train.optimizer == "adamw"
    probs = sorted(1 - s for s in intro.data.sparsity)
    assert probs[0] == pytest.approx(1 / 20, rel=1e-4) and probs[-1] == 1.0
    dev = load_config("devinterp-tms")
    assert (dev.model.n_features, dev.model.n_hidden, dev.data.kind, dev.data.n_samples) == (
        8, 2, "one-hot-binary", 1000)
    assert (dev.train.lr, dev.train.momentum, dev.train.batch_size, dev.checkpoints.log_points) \
        == (0.01, 0.9, 100, 50)
    assert load_config("activations27").model.activations == ALL
    quick = load_config("quick")
    assert quick.model.activations == ALL


def test_instance_table_is_the_cross_product_with_activation_outermost():
    config = config_from_dict({
        "model": {"activations": ["gelu", "relu"], "n_features": 4, "n_hidden": 2},
        "data": {"sparsity": [0.1, 0.9], "importance_ratio": [1.0, 0.5]},
        "train": {"seeds": [3, 4]},
    })
    table = instance_table(config)
    assert len(table) == 16 and list(table["instance"]) == list(range(16))
    assert list(table["activation"][:8]) == ["gelu"] * 8
    assert list(table["seed"][:4]) == [3, 4, 3, 4]
    assert table["feature_probability"].iloc[-1] == pytest.approx(0.1)


def _tiny():
    return tomllib.loads(TINY_TOML)


def _with(section, key, value):
    raw = _tiny()
    if section is None:
        raw[key] = value
    else:
        raw.setdefault(section, {})[key] = value
    return raw


BAD = [
    (_with(None, "modle", {}), "unknown key 'modle'"),
    (_with("model", "n_featurs", 5), "model.n_featurs: unknown key"),
    (_with("model", "n_features", "5"), "model.n_features: expected an integer"),
    (_with("model", "n_features", 5.0), "model.n_features: expected an integer"),
    (_with("model", "n_hidden", 5), "model.n_hidden = 5 is not allowed: must be smaller"),
    (_with("model", "n_hidden", 7), "model.n_hidden = 7"),
    (_with("model", "activations", ["rleu"]), "unknown activation 'rleu'"),
    (_with("model", "activations", []), "model.activations"),
    (_with("model", "reduction", "max"), "model.reduction = 'max'"),
    (_with("model", "bias", "yes"), "model.bias: expected true or false"),
    (_with("data", "kind", "gaussian"), "data.kind = 'gaussian'"),
    (_with("data", "sparsity", [1.0]), "data.sparsity = 1.0"),
    (_with("data", "sparsity", [-0.1]), "data.sparsity = -0.1"),
    (_with("data", "sparsity", []), "data.sparsity"),
    (_with("data", "importance_ratio", [0.0]), "data.importance_ratio = 0.0"),
    (_with("data", "n_samples", -5), "data.n_samples = -5"),
    (_with("train", "steps", 0), "train.steps = 0"),
    (_with("train", "lr", -1e-3), "train.lr = -0.001"),
    (_with("train", "optimizer", "lbfgs"), "train.optimizer = 'lbfgs'"),
    (_with("train", "momentum", 1.5), "train.momentum = 1.5"),
    (_with("train", "seeds", []), "train.seeds"),
    (_with("train", "seeds", [1, 1]), "train.seeds"),
    (_with("train", "batch_size", 0), "train.batch_size = 0"),
    (_with("train", "compile", True), "train.compile"),
    (_with("train", "compile", "yes"), "train.compile = 'yes'"),
    (_with("train", "init", "kgon") | {"model": {"n_features": 5, "n_hidden": 3}},
     "train.init = 'kgon'"),
    (_with("checkpoints", "log_points", -1), "checkpoints.log_points = -1"),
    (_with("llc", "eps", -1e-4), "llc.eps = -0.0001"),
    (_with("llc", "chains", 0), "llc.chains = 0"),
    (_with("llc", "gamma", -1.0), "llc.gamma = -1.0"),
    (_with("llc", "draws", 0), "llc.draws = 0"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_name_the_field(raw, message):
    with pytest.raises(UserError) as info:
        config_from_dict(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sparsity_is_only_for_sparse_uniform():
    raw = _with("data", "sparsity", [0.5])  # tiny is single-feature data
    with pytest.raises(UserError, match="data.sparsity"):
        config_from_dict(raw)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UserError, match="unknown preset 'quik'.*quick"):
        load_config("quik")


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_features = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)
