"""DLRM: shapes, unknown ids, and a rebuild from config + state_dict alone."""

import dataclasses

import pytest
import torch

from sparkml_ext.deep.model import DLRM, DLRMConfig, load_model, save_model


def inputs(rows=8, numeric=5, sizes=(10, 20, 30), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, s, (rows,), generator=g) for s in sizes], dim=1)
    return torch.randn(rows, numeric, generator=g), ids


def test_logit_per_row_and_pairwise_interactions():
    model = DLRM(DLRMConfig(num_numeric=5, embedding_sizes=(10, 20, 30), embedding_dim=4))
    assert model.pairs.shape == (2, 6)  # 4 vectors (bottom + 3 tables) -> 6 pairs
    assert model(*inputs()).shape == (8,)
    only_tables = DLRM(DLRMConfig(num_numeric=0, embedding_sizes=(10, 20)))
    assert only_tables(torch.zeros(8, 0), inputs(sizes=(10, 20))[1]).shape == (8,)
    only_numeric = DLRM(DLRMConfig(num_numeric=5, embedding_sizes=()))
    assert only_numeric(inputs()[0], torch.zeros(8, 0, dtype=torch.int64)).shape == (8,)
    with pytest.raises(ValueError, match="at least one numeric or categorical"):
        DLRMConfig(num_numeric=0, embedding_sizes=())


def test_ids_outside_a_table_are_the_unknown_id():
    model = DLRM(DLRMConfig(num_numeric=5, embedding_sizes=(10, 20, 30)))
    numeric, ids = inputs()
    unknown = ids.clone()
    unknown[:, 0] = 0
    strange = ids.clone()
    strange[:, 0] = torch.tensor([10, 11, -1, 999, 10**12, -5, 10, 10])
    assert torch.equal(model(numeric, strange), model(numeric, unknown))


def test_folded_ids_share_rows_by_modulo_and_keep_null_and_in_table_ids():
    model = DLRM(DLRMConfig(num_numeric=5, embedding_sizes=(10, 20, 30), fold_ids=True))
    numeric, ids = inputs()
    big = ids.clone()
    big[:, 0] = torch.tensor([0, 1, 9, 10, 18, 10**12 + 1, -3, 5])
    folded = ids.clone()  # 1 + (k - 1) mod 9; null (0) and negative ids stay the unknown id 0
    folded[:, 0] = torch.tensor([0, 1, 9, 1, 9, 1 + 10**12 % 9, 0, 5])
    assert torch.equal(model(numeric, big), model(numeric, folded))
    with pytest.raises(ValueError, match="folding ids needs tables of >= 2 rows"):
        DLRMConfig(num_numeric=1, embedding_sizes=(1,), fold_ids=True)


def test_config_and_state_dict_rebuild_the_model(tmp_path):
    config = DLRMConfig(
        num_numeric=5,
        embedding_sizes=(10, 20, 30),
        embedding_dim=8,
        bottom_mlp=(16, 8),
        top_mlp=(12,),
    )
    model = DLRM(config)
    rebuilt = DLRM(DLRMConfig.from_dict(config.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(model(*inputs()), rebuilt(*inputs()))

    columns = {"numeric": ["a"], "categorical": ["b", "c", "d"], "label": "y"}
    save_model(model, tmp_path / "out" / "model.pt", columns)
    loaded, saved_config = load_model(tmp_path / "out" / "model.pt")
    assert saved_config == {"model": config.to_dict(), "columns": columns}
    assert torch.equal(model(*inputs()), loaded(*inputs()))
    with pytest.raises(ValueError, match="unknown model config keys"):
        DLRMConfig.from_dict({**config.to_dict(), "dropout": 0.1})


def test_forward_under_mixed_precision_autocast():
    """Embeddings stay fp32 while MLP outputs are bf16: the interaction must accept both."""
    model = DLRM(DLRMConfig(num_numeric=5, embedding_sizes=(10, 20, 30)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(*inputs())
    assert logits.shape == (8,) and torch.isfinite(logits.float()).all()


def test_numeric_inputs_are_squashed_and_standardised():
    raw = DLRM(DLRMConfig(num_numeric=2, embedding_sizes=(10,)))
    config = dataclasses.replace(raw.config, numeric_mean=(1.0, -2.0), numeric_std=(2.0, 0.5))
    standardised = DLRM(config)
    standardised.load_state_dict(raw.state_dict())  # the statistics are config, not weights
    numeric, ids = torch.tensor([[3.0, -100.0], [0.0, 5e6]]), torch.tensor([[1], [2]])
    squashed = torch.sign(numeric) * torch.log1p(numeric.abs())
    expected = raw((squashed - torch.tensor([1.0, -2.0])) / torch.tensor([2.0, 0.5]), ids)
    assert torch.allclose(standardised(numeric, ids), expected)
    with pytest.raises(ValueError, match="numeric_mean and numeric_std need 2 values each"):
        DLRMConfig(num_numeric=2, embedding_sizes=(), numeric_mean=(1.0,), numeric_std=(1.0,))
    with pytest.raises(ValueError, match="numeric_std must be > 0"):
        DLRMConfig(num_numeric=1, embedding_sizes=(), numeric_mean=(1.0,), numeric_std=(0.0,))


def test_vocabulary_ids_get_their_own_rows_and_every_other_id_row_zero(tmp_path):
    vocabularies = ((3, 7, 10**12), (5,), (1, 2))
    config = DLRMConfig(num_numeric=5, embedding_sizes=(4, 2, 3), vocabularies=vocabularies)
    model = DLRM(config)
    ids = torch.tensor([[3, 5, 1], [7, 6, 2], [10**12, 0, 9], [4, -5, 2], [0, 5, 10**12]])
    rows = torch.tensor([[1, 1, 1], [2, 0, 2], [3, 0, 0], [0, 0, 2], [0, 1, 0]])
    assert torch.equal(model._vocabulary_rows(ids), rows)
    numeric = torch.randn(5, 5)  # other ids outside the vocabularies give the same logits
    assert torch.equal(model(numeric, ids), model(numeric, rows_as_ids(rows, vocabularies)))

    save_model(model, tmp_path / "model.pt", {"numeric": [], "categorical": [], "label": "y"})
    loaded, _ = load_model(tmp_path / "model.pt")  # the vocabularies travel in the config
    assert loaded.config.vocabularies == vocabularies
    assert torch.equal(loaded(numeric, ids), model(numeric, ids))


def rows_as_ids(rows: torch.Tensor, vocabularies) -> torch.Tensor:
    """The id that row r > 0 stands for, and -1 (in no vocabulary) for row 0."""
    columns = [torch.tensor([-1, *v])[rows[:, j]] for j, v in enumerate(vocabularies)]
    return torch.stack(columns, dim=1)


def test_vocabularies_must_match_the_tables_and_be_sorted():
    with pytest.raises(ValueError, match=r"table sizes must be \(3,\)"):
        DLRMConfig(num_numeric=1, embedding_sizes=(4,), vocabularies=((1, 2),))
    with pytest.raises(ValueError, match="distinct ids in ascending order"):
        DLRMConfig(num_numeric=1, embedding_sizes=(3,), vocabularies=((2, 1),))
    with pytest.raises(ValueError, match="either folded or looked up"):
        DLRMConfig(num_numeric=1, embedding_sizes=(3,), vocabularies=((1, 2),), fold_ids=True)
