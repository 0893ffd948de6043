"""Pipeline config: typed values, env interpolation, overrides, and errors naming file + key."""

import pickle
from pathlib import Path

import pytest

from sparkml_ext.cli import EXIT_CONFIG, main
from sparkml_ext.config import ConfigError, NumericSpec, load_config
from sparkml_ext.deep.config import TrainConfig
from sparkml_ext.feature_spec import feature_columns, spec_fingerprint

CLICKS = "conf/pipelines/clicks.yaml"


def test_clicks_pipeline_loads_typed():
    cfg = load_config(CLICKS)
    assert cfg.source.format == "csv"
    assert cfg.source.options["sep"] == "\t"
    assert list(cfg.source.schema)[:4] == ["event_id", "user_id", "event_time", "label"]
    assert len(cfg.source.schema) == 4 + 13 + 26
    assert cfg.ingest.on_bad_record == "quarantine"
    assert Path(cfg.table_path("bronze")).is_absolute()


def test_overrides_are_typed_like_the_file():
    cfg = load_config(CLICKS, ["generate.rows=1234", "ingest.on_bad_record=fail", "generate.null_rate=0"])
    assert cfg.generate.rows == 1234
    assert cfg.generate.null_rate == 0.0
    assert cfg.ingest.on_bad_record == "fail"


def test_numeric_is_a_list_of_log1p_columns_or_a_mapping_with_shorthands():
    listed = load_config(CLICKS).features
    assert listed.numeric["i1"] == NumericSpec("log1p", None) and len(listed.numeric) == 13
    mapped = load_config(CLICKS, ["features.numeric={i1: none, i2: {clip: [-5, 5.5]}}",
                                  "features.entities.user_id.aggregates={i2: [mean]}"]).features
    assert mapped.numeric == {"i1": NumericSpec("none"), "i2": NumericSpec("log1p", (-5.0, 5.5))}
    assert mapped.bound("i2") == mapped.clip and mapped.bound("i1") is None


def test_environment_interpolation(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARKML_EXT_LAKEHOUSE", str(tmp_path / "lake"))
    assert load_config(CLICKS).table_path("bronze") == f"{tmp_path}/lake/bronze/clicks"
    monkeypatch.delenv("SPARKML_EXT_LAKEHOUSE")
    assert load_config(CLICKS).lakehouse == "lakehouse"


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("ingest.on_bad_record=maybe", "ingest.on_bad_record", "not one of"),
        ("generate.rows=many", "generate.rows", "expected int"),
        ("generate.null_rate=1.5", "generate.null_rate", "must be in [0, 1)"),
        ("generate.batches=0", "generate.batches", "an int between 1 and rows"),
        ("source.bogus=1", "source.bogus", "unknown key"),
        ("tables.bronze=", "tables.bronze", "must not be empty"),
        ("source.schema.i1=decimalish", "source.schema.i1", "unknown type"),
        ("source.key=nope", "source.key", "not in source.schema"),
        ("source.event_time=label", "source.event_time", "must be a timestamp"),
        ("train_torch.epochs=0", "train_torch.epochs", "must be at least 1, got 0"),
        ("train_torch.precision=fp8", "train_torch.precision", "not one of"),
        ("train_torch.bottom_mlp=[0]", "train_torch.bottom_mlp", "at least 1"),
        ("train_torch.checkpoint_dir=/tmp", "train_torch.checkpoint_dir", "unknown key"),
        ("holdout.by=random", "holdout.by", "not one of"),
        ("holdout.test=0", "holdout.test", "must be a share in (0, 1)"),
        ("holdout.validation=0.9", "holdout.validation + test", "must leave rows to train on"),
        ("holdout.gap=1 week", "holdout.gap", "not a duration like"),
        ("features.numeric={i1: sqrt}", "features.numeric.i1.transform", "not one of log1p, none"),
        ("features.numeric={i1: {clip: [5, 1]}}", "features.numeric.i1.clip", "low < high"),
        ("features.numeric={label: none}", "features.numeric.label", "features.label too"),
        ("features.numeric={i1: none}", "features.entities.user_id.aggregates.i1", "mean needs the column's values bounded"),
        ("features.entities.user_id.aggregates={i1: [mean, max, mean]}", "features.entities.user_id.aggregates.i1",
         "mean is listed twice"),
        ("features.entities.user_id.aggregates={i1: [median]}", "features.entities.user_id.aggregates.i1[0]",
         "not one of count, sum, mean, min, max, stddev"),
        ("features.entities.user_id.aggregates={label: [sum]}", "features.entities.user_id.aggregates.label",
         "the label's history is features.label_rate"),
        ("features.entities.user_id.windows=[]", "features.entities.user_id.windows", "at least one window"),
        ("features.entities.user_id.windows=[1w]", "features.entities.user_id.windows[0]", "not a duration"),
        ("features.entities={event_id: {windows: [1d]}}", "features.entities.event_id", "an entity is a column"),
        ("features.categorical=[c1, label]", "features.categorical[1]", "'label' is features.label; a feature"),
        ("features.categorical=[event_id]", "features.categorical[0]", "a key is no feature"),
    ],
)
def test_bad_values_name_the_file_and_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(CLICKS, [override])
    assert str(err.value).startswith(f"{CLICKS}: {key}:")
    assert words in str(err.value)


def test_train_torch_is_the_ranks_knobs_plus_the_drivers():
    cfg = load_config(CLICKS, ["train_torch.bottom_mlp=[32, 16]", "train_torch.shuffle_buffer=4096"])
    ranks = cfg.train_torch.for_ranks(device="cpu", checkpoint_dir="ckpt")
    assert type(ranks) is TrainConfig and pickle.loads(pickle.dumps(ranks)) == ranks
    assert (ranks.bottom_mlp, ranks.shuffle_buffer, ranks.epochs) == ((32, 16), 4096, 3)
    assert (ranks.device, ranks.checkpoint_dir) == ("cpu", "ckpt")


def test_missing_environment_variable_is_named(tmp_path):
    path = _write(tmp_path, "name: x\nlakehouse: ${SPARKML_EXT_SURELY_UNSET}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: lakehouse: environment variable SPARKML_EXT_SURELY_UNSET"):
        load_config(path)


def test_missing_section_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"p.yaml: source: required key is missing"):
        load_config(_write(tmp_path, "name: x\nlakehouse: l\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_config(tmp_path / "absent.yaml")


def test_the_label_has_no_default_and_entities_are_optional():
    """No default could name a user's column; without an entity there are no window features."""
    with pytest.raises(ConfigError, match=r"clicks.yaml: features.label: required key is missing"):
        load_config(CLICKS, ["features={categorical: [c1]}"])
    assert load_config(CLICKS, ["features={label: label}"]).features.entities == {}
    with pytest.raises(ConfigError, match=r"features.entities: window features need the events' time"):
        load_config(CLICKS, ["source.event_time=null"])
    with pytest.raises(ConfigError, match=r"ingest.on_existing_key: 'update' .* needs source.event_time"):
        load_config(CLICKS, ["source.event_time=null", "features.entities={}", "ingest.on_existing_key=update"])


def test_a_file_with_the_one_entity_keys_is_told_what_replaces_them(tmp_path):
    """features.entity / windows / window_means, from files written before entities had their
    own windows and aggregates: the refusal writes out the entities section they mean."""
    with pytest.raises(ConfigError) as err:
        load_config(CLICKS, ["features={label: label, entity: user_id, windows: [1h, 1d], window_means: [i1, i3]}"])
    assert str(err.value) == (
        f"{CLICKS}: features.entity: replaced by features.entities, one entry per entity with its own "
        "windows and aggregates; write `entities: {user_id: {windows: [1h, 1d], aggregates: {i1: [mean], "
        "i3: [mean]}}}`")


def test_entities_have_their_own_windows_and_aggregates():
    spec = load_config(CLICKS, [("features.entities={user_id: {windows: [1d], aggregates: {i1: [min, stddev]}}, "
                                 "c1: {windows: [1h, 7d], aggregates: {i2: [count]}}}")]).features
    assert spec.entities["c1"].window_seconds() == {"1h": 3600, "7d": 604800}
    assert feature_columns(spec)["numeric"][-14:] == [
        "user_id_events_1d", "user_id_label_rate_1d", "user_id_min_i1_1d", "user_id_stddev_i1_1d",
        "user_id_log_seconds_since_prev", "user_id_no_recent_event",
        "c1_events_1h", "c1_label_rate_1h", "c1_count_i2_1h", "c1_events_7d", "c1_label_rate_7d",
        "c1_count_i2_7d", "c1_log_seconds_since_prev", "c1_no_recent_event"]


def test_cli_exits_2_with_one_clear_line(capsys):
    code = main(["ingest", "--pipeline", CLICKS, "--batch-id", "b", "--set", "ingest.on_bad_record=maybe"])
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err == f"config error: {CLICKS}: ingest.on_bad_record: 'maybe' is not one of quarantine, fail"


def test_the_label_rate_follows_the_labels_type_and_keeps_old_tables_fingerprints():
    """A numeric label gets its window rate; a string label (a class name) none. The feature
    tables built before (label_rate always on; one entity, means only, in the fields
    features.entity / windows / window_means) keep their fingerprint: these are the values
    the code of 6ee22ce gave for the shipped files."""
    numeric = load_config(CLICKS).features
    named = load_config(CLICKS, ["features.label=c1", "features.categorical=[c2]"]).features
    assert numeric.label_rate is True and named.label_rate is False
    assert "user_id_label_rate_1d" in feature_columns(numeric)["numeric"]
    assert not [c for c in feature_columns(named)["numeric"] if "label_rate" in c]
    assert spec_fingerprint(numeric) == "6e86d4cef73ef82d"
    assert spec_fingerprint(load_config(CLICKS, ["features.label_rate=false"]).features) == "3e50063fa75fd8d0"
    assert spec_fingerprint(load_config("conf/pipelines/penguins.yaml").features) == "cc7d1cd0c0d7c27e"
    two = load_config(CLICKS, ["features.entities.c1={windows: [1d]}"]).features
    assert len({spec_fingerprint(two), spec_fingerprint(numeric)}) == 2
