import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.artifacts import SCORE_SCHEMA
from prefscale.config import PseudolabelConfig
from prefscale.data import schema
from prefscale.data.pairs import generate_pairs
from prefscale.data.readers import open_battles
from prefscale.data.validate import Validator
from prefscale.io import write_table
from prefscale.score.pseudolabel import ensemble, write_pseudolabels

LONG = pa.table({"instruction": ["i"] * 5, "generator": list("abcde"), "output": list("vwxyz")})


def scores(ids, probs, model):
    probs = np.asarray(probs, dtype=np.float32)
    return pa.table({"id": ids, "model": [model] * len(ids), "logit_a": np.log(probs[:, 0]), "logit_b": np.log(probs[:, 1]),
                     "logit_tie": np.log(probs[:, 2]), "prob_a": probs[:, 0], "prob_b": probs[:, 1], "prob_tie": probs[:, 2],
                     "swap_flip": [None] * len(ids), "tokens": [1] * len(ids), "computed_tokens": [1] * len(ids)}, schema=SCORE_SCHEMA)


@pytest.fixture
def setup(tmp_path):
    battles = pa.concat_tables(list(generate_pairs(LONG)))  # 10 unlabeled battles
    write_table(battles, tmp_path / "pairs.parquet")
    ids = battles.column("id").to_pylist()
    rng = np.random.default_rng(0)
    first = rng.dirichlet([1, 1, 1], size=9)
    second = rng.dirichlet([1, 1, 1], size=9)
    write_table(scores(ids[:9], first, "m1"), tmp_path / "s1" / "part-0.parquet")
    write_table(scores(ids[:9], second, "m2"), tmp_path / "s2" / "part-0.parquet")
    return tmp_path, ids, (first + second) / 2


def test_ensemble_averages_models_and_scores_agreement(setup):
    tmp, ids, mean = setup
    table = ensemble([str(tmp / "s1"), str(tmp / "s2")])
    assert np.allclose(table.loc[ids[:9], ["prob_a", "prob_b", "prob_tie"]].to_numpy(), mean, atol=1e-6)
    assert set(table.pl_agreement.unique()) <= {0.5, 1.0} and (table.pl_models == 2).all()


def test_every_battle_is_labeled_or_rejected_with_a_reason(setup):
    tmp, ids, mean = setup
    summary = write_pseudolabels(str(tmp / "pairs.parquet"), [str(tmp / "s1"), str(tmp / "s2")], str(tmp / "pl.parquet"),
                                 str(tmp / "rej.parquet"), PseudolabelConfig(min_confidence=0.5))
    labeled, rejects = pq.read_table(tmp / "pl.parquet"), pq.read_table(tmp / "rej.parquet")
    assert labeled.num_rows + rejects.num_rows == 10 == summary["battles"]
    assert rejects.filter(pa.compute.equal(rejects["id"], ids[9])).column("reject_reason").to_pylist() == ["unscored"]
    assert summary["pseudolabeled"] == int((mean.max(axis=1) >= 0.5).sum())
    assert (labeled.column("pl_confidence").to_numpy() >= 0.5).all()
    # The output is training data as it is: it validates clean, with soft labels.
    clean, bad = next(Validator().validate(open_battles(str(tmp / "pl.parquet")).batches()))
    assert bad.num_rows == 0 and schema.is_labeled(clean)
    assert all("pseudolabel" in f for f in clean.column(schema.FLAGS).to_pylist())


def test_uniform_balance_evens_out_top_classes(setup):
    tmp, ids, _ = setup
    write_pseudolabels(str(tmp / "pairs.parquet"), [str(tmp / "s1")], str(tmp / "pl.parquet"), str(tmp / "rej.parquet"),
                       PseudolabelConfig(balance="uniform"))
    labels = schema.label_matrix(pq.read_table(tmp / "pl.parquet")).argmax(axis=1)
    counts = np.bincount(labels, minlength=3)
    assert counts.max() - counts.min() <= 1
    assert "class_balance" in pq.read_table(tmp / "rej.parquet").column("reject_reason").to_pylist()


def test_battles_the_teachers_disagree_on_are_rejected_with_a_reason(setup):
    tmp, ids, _ = setup
    table = ensemble([str(tmp / "s1"), str(tmp / "s2")])
    write_pseudolabels(str(tmp / "pairs.parquet"), [str(tmp / "s1"), str(tmp / "s2")], str(tmp / "pl.parquet"), str(tmp / "rej.parquet"),
                       PseudolabelConfig(min_agreement=1.0))
    rejects = pq.read_table(tmp / "rej.parquet").to_pandas().set_index("id")["reject_reason"]
    split = table.index[table.pl_agreement < 1.0]
    assert len(split) > 0 and (rejects.loc[split] == "low_agreement").all()
    assert (pq.read_table(tmp / "pl.parquet").column("pl_agreement").to_numpy() == 1.0).all()


def test_battles_that_repeat_a_labeled_one_are_rejected_naming_it(setup):
    tmp, ids, _ = setup
    pairs = pq.read_table(tmp / "pairs.parquet")
    first, second = pairs.slice(0, 1).to_pylist()[0], pairs.slice(3, 1).to_pylist()[0]
    swapped = {**second, "response_a": second["response_b"], "response_b": second["response_a"]}  # the same battle, A and B swapped
    labeled = pa.Table.from_pylist([{**first, "id": 900}, {**swapped, "id": 901}], schema=pairs.schema)
    write_table(labeled, tmp / "labeled.parquet")
    summary = write_pseudolabels(str(tmp / "pairs.parquet"), [str(tmp / "s1")], str(tmp / "pl.parquet"), str(tmp / "rej.parquet"),
                                 PseudolabelConfig(), labeled_uri=str(tmp / "labeled.parquet"))
    rejects = pq.read_table(tmp / "rej.parquet").to_pandas().set_index("id")
    assert rejects.loc[[ids[0], ids[3]], "reject_reason"].tolist() == ["in_labeled_set"] * 2
    assert rejects.loc[[ids[0], ids[3]], "reject_detail"].tolist() == ["same battle as labeled id 900", "same battle as labeled id 901"]
    assert summary["rejected"] == {"in_labeled_set": 2, "unscored": 1} and summary["pseudolabeled"] + 3 == summary["battles"] == 10
    assert not set(pq.read_table(tmp / "pl.parquet").column("id").to_pylist()) & {ids[0], ids[3]}
