"""Configs: presets load, bad configs fail naming the field, the instance table is the sweep."""

import dataclasses

import pytest

from devtms.activations import ALL
from devtms.config import config_from_dict, instance_table, load_config, preset_names
from devtms.errors import UserError

from .conftest import tiny_config


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


BAD = [
    (tiny_config(modle={}).raw, "unknown key 'modle'"),
    (tiny_config(model={"n_featurs": 5}).raw, "model.n_featurs: unknown key"),
    (tiny_config(model={"n_features": "5"}).raw, "model.n_features: expected an integer"),
    (tiny_config(model={"n_features": 5.0}).raw, "model.n_features: expected an integer"),
    (tiny_config(model={"n_hidden": 5}).raw, "model.n_hidden = 5 is not allowed: must be smaller"),
    (tiny_config(model={"n_hidden": 7}).raw, "model.n_hidden = 7"),
    (tiny_config(model={"activations": ["rleu"]}).raw, "unknown activation 'rleu'"),
    (tiny_config(model={"activations": []}).raw, "model.activations"),
    (tiny_config(model={"reduction": "max"}).raw, "model.reduction = 'max'"),
    (tiny_config(model={"bias": "yes"}).raw, "model.bias: expected true or false"),
    (tiny_config(data={"kind": "gaussian"}).raw, "data.kind = 'gaussian'"),
    (tiny_config(data={"sparsity": [1.0]}).raw, "data.sparsity = 1.0"),
    (tiny_config(data={"sparsity": [-0.1]}).raw, "data.sparsity = -0.1"),
    (tiny_config(data={"sparsity": []}).raw, "data.sparsity"),
    (tiny_config(data={"importance_ratio": [0.0]}).raw, "data.importance_ratio = 0.0"),
    (tiny_config(data={"n_samples": -5}).raw, "data.n_samples = -5"),
    (tiny_config(train={"steps": 0}).raw, "train.steps = 0"),
    (tiny_config(train={"lr": -1e-3}).raw, "train.lr = -0.001"),
    (tiny_config(train={"optimizer": "lbfgs"}).raw, "train.optimizer = 'lbfgs'"),
    (tiny_config(train={"momentum": 1.5}).raw, "train.momentum = 1.5"),
    (tiny_config(train={"seeds": []}).raw, "train.seeds"),
    (tiny_config(train={"seeds": [1, 1]}).raw, "train.seeds"),
    (tiny_config(train={"batch_size": 0}).raw, "train.batch_size = 0"),
    (tiny_config(train={"compile": True}).raw, "train.compile"),
    (tiny_config(train={"compile": "yes"}).raw, "train.compile = 'yes'"),
    (tiny_config(train={"init": "kgon"}, model={"n_hidden": 3}).raw, "train.init = 'kgon'"),
    (tiny_config(checkpoints={"log_points": -1}).raw, "checkpoints.log_points = -1"),
    (tiny_config(llc={"eps": -1e-4}).raw, "llc.eps = -0.0001"),
    (tiny_config(llc={"chains": 0}).raw, "llc.chains = 0"),
    (tiny_config(llc={"gamma": -1.0}).raw, "llc.gamma = -1.0"),
    (tiny_config(llc={"draws": 0}).raw, "llc.draws = 0"),
    (tiny_config(llc={"by_activation": {"tanh": {"eps": 0.0}}}).raw,
     "llc.by_activation.tanh.eps = 0.0"),
    (tiny_config(llc={"by_activation": {"tanh": {"chains": 2}}}).raw,
     "llc.by_activation.tanh.chains: unknown key"),
    (tiny_config(llc={"by_activation": {"rleu": {"eps": 0.01}}}).raw,
     "llc.by_activation.rleu: 'rleu' is not an activation; choose from relu, "),
    (tiny_config(llc={"by_activation": {"tanh": 0.01}}).raw,
     "llc.by_activation.tanh: expected a table"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_name_the_field(raw, message):
    with pytest.raises(UserError) as info:
        config_from_dict(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sparsity_is_only_for_sparse_uniform():
    raw = tiny_config(data={"sparsity": [0.5]}).raw  # tiny is single-feature data
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


def test_an_activations_own_llc_values_replace_the_sections_for_it_alone(tmp_path):
    """[llc.by_activation.NAME] sets some values for one activation: its setting is the [llc]
    section's with those replaced, every other activation keeps the section's, and the table
    survives run.json's round trip."""
    from devtms.llc import config_settings

    text = tiny_config().toml + "\n[llc.by_activation.tanh]\neps = 0.001\ndraws = 80\n"
    path = tmp_path / "own.toml"
    path.write_text(text)
    config = load_config(path)
    assert config_from_dict(config.to_dict()) == config
    settings = config_settings(config)
    base, tanh = settings.default.params, settings.of("tanh").params
    assert (tanh.eps, tanh.draws) == (0.001, 80) and (base.eps, base.draws) == (0.003, 20)
    assert dataclasses.replace(tanh, eps=base.eps, draws=base.draws) == base
    assert settings.of("relu") == settings.default and settings.id.startswith(base.tag("batched"))


def test_the_preconditioner_is_an_llc_value_and_an_activation_can_have_its_own(tmp_path):
    """[llc] precond = "rmsprop" with one activation back on plain SGLD ("none" is a value,
    not "unset") and one on eps alone: the TOML round-trips, and each activation's setting has
    its preconditioner."""
    from devtms.llc import config_settings

    text = (tiny_config(llc={"precond": "rmsprop"}).toml
            + '\n[llc.by_activation.tanh]\nprecond = "none"\n'
            + "\n[llc.by_activation.gelu]\neps = 0.001\n")
    path = tmp_path / "precond.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.llc.precond == "rmsprop"
    assert config_from_dict(config.to_dict()) == config
    settings = config_settings(config)
    assert settings.default.params.precond == "rmsprop"
    assert settings.of("tanh").params.precond == "none"
    assert (settings.of("gelu").params.precond, settings.of("gelu").params.eps) == ("rmsprop",
                                                                                    0.001)
    assert config.with_llc(precond="none").llc.precond == "none"
    for bad in ({"precond": "adam"}, {"by_activation": {"tanh": {"precond": "adam"}}}):
        with pytest.raises(UserError, match="precond = 'adam' is not allowed"):
            config_from_dict(tiny_config(llc=bad).raw)


def test_gamma_per_n_beta_scales_the_localization_with_n_beta_and_replaces_gamma(tmp_path):
    """[llc] gamma_per_n_beta: gamma = it x n_beta (N / log N of the LLC dataset), whatever
    gamma says; an activation's own gamma still wins for it; the value must be positive."""
    import math

    from devtms.llc import config_settings
    from devtms.llc.params import LLCParams

    for n in (300, 5000):
        config = config_from_dict(tiny_config(data={"n_samples": n},
                                              llc={"gamma_per_n_beta": 0.0345, "gamma": 99.0}).raw)
        params = LLCParams.of_run(config)
        assert params.n_beta == pytest.approx(n / math.log(n))
        assert params.gamma == pytest.approx(0.0345 * n / math.log(n))
    config = config_from_dict(tiny_config(llc={"gamma_per_n_beta": 0.05, "by_activation": {
        "tanh": {"gamma": 7.0}}}).raw)
    settings = config_settings(config)
    assert settings.of("tanh").params.gamma == 7.0
    assert settings.default.params.gamma == pytest.approx(0.05 * settings.default.params.n_beta)
    assert config_from_dict(config.to_dict()) == config
    for bad in (-1.0, 0.0, float("inf")):
        with pytest.raises(UserError, match="gamma_per_n_beta"):
            config_from_dict(tiny_config(llc={"gamma_per_n_beta": bad}).raw)
