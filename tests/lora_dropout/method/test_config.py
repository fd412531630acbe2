import json

import pytest

from lora_dropout.method.config import EnsembleAverage, EvalMode, LoraDropoutConfig, MaskScope


def test_defaults_follow_the_paper_and_theory_md():
    cfg = LoraDropoutConfig()
    assert cfg.mask_scope is MaskScope.EXAMPLE
    assert cfg.rescale is False
    assert cfg.eval_mode is EvalMode.ENSEMBLE
    assert cfg.ensemble_average is EnsembleAverage.PROBS
    assert cfg.eval_instances == cfg.n_instances  # N_test = N unless set
    # ... also after changing N: the default follows, an explicit value does not
    assert cfg.replace(n_instances=2).eval_instances == 2
    assert cfg.replace(n_eval_instances=8).replace(n_instances=2).eval_instances == 8


def test_strings_become_enums_and_the_config_is_frozen():
    cfg = LoraDropoutConfig(mask_scope="token", eval_mode="expected", ensemble_average="logits")
    assert cfg.mask_scope is MaskScope.TOKEN and cfg.eval_mode is EvalMode.EXPECTED
    assert cfg.ensemble_average is EnsembleAverage.LOGITS
    with pytest.raises(AttributeError):
        cfg.dropout_rate = 0.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.1),
        ("dropout_rate", float("nan")),
        ("dropout_rate", "0.3"),
        ("n_instances", 0),
        ("n_instances", 2.0),
        ("n_eval_instances", 0),
        ("mask_scope", "sentence"),
        ("rescale", "yes"),
        ("eval_mode", "mean"),
        ("ensemble_average", "votes"),
        ("seed", -1),
        ("max_instances_per_forward", 0),
    ],
)
def test_invalid_values_name_the_field_and_the_value(field, value):
    with pytest.raises(ValueError, match=field) as info:
        LoraDropoutConfig(**{field: value})
    assert repr(value) in str(info.value)


def test_derived_quantities():
    cfg = LoraDropoutConfig(dropout_rate=0.5)
    assert cfg.sparsity == pytest.approx(0.75)
    assert cfg.expected_scale == pytest.approx(0.25)  # (1 - p)^2
    rescaled = cfg.replace(rescale=True)
    assert rescaled.mask_value == pytest.approx(2.0)
    assert rescaled.expected_scale == pytest.approx(1.0)


def test_dict_round_trip_and_unknown_keys():
    cfg = LoraDropoutConfig(dropout_rate=0.2, n_instances=3, n_eval_instances=8, mask_scope="batch", seed=7)
    data = json.loads(cfg.to_json())
    assert data["mask_scope"] == "batch"
    assert LoraDropoutConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="dropuot_rate"):
        LoraDropoutConfig.from_dict({**data, "dropuot_rate": 0.1})


def test_run_sizes_default_to_what_is_available_up_to_a_cap():
    from lora_dropout.runs.config import SIZE_CAPS, RunConfig, TrainConfig

    tc = TrainConfig()
    assert (tc.n_train, tc.n_test, tc.eval_train_size) == ("auto", "auto", "auto")
    assert SIZE_CAPS == {"n_train": 500, "n_test": 1000, "eval_train_size": 500}
    # the default: all available up to the cap
    assert tc.resolve_size("n_test", 421, "test examples") == 421
    assert tc.resolve_size("n_test", 2556, "test examples") == 1000
    assert tc.resolve_size("n_train", 10196, "train examples") == 500
    # None: all; an explicit number: exactly that, and above what is available an error naming it
    assert TrainConfig(n_test=None).resolve_size("n_test", 2556, "test examples") == 2556
    assert TrainConfig(n_test=1000).resolve_size("n_test", 2556, "test examples") == 1000
    with pytest.raises(ValueError, match="n_test=1000 exceeds the 421 available test examples"):
        TrainConfig(n_test=1000).resolve_size("n_test", 421, "test examples")
    with pytest.raises(ValueError, match="n_train='all' must be 'auto', None or an integer >= 1"):
        TrainConfig(n_train="all")
    # "auto" survives the meta.json round trip, so a reloaded run resolves the same sizes
    assert RunConfig.from_dict(json.loads(json.dumps(RunConfig().to_dict()))).train.n_test == "auto"
