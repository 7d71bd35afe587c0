"""The leaderboard: Davidson's Bradley-Terry with ties recovers known strengths, from labels or
from predicted probabilities, with honest bootstrap intervals; the command writes every format."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import check_grad

from prefscale.artifacts import SCORE_SCHEMA
from prefscale.cli import main
from prefscale.leaderboard import _negative_log_likelihood, leaderboard

TRUE = np.array([1.2, 0.6, 0.0, -0.5, -1.3])  # log-strengths
NU = 0.7


def simulate(battles: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(TRUE), battles)
    second = (first + rng.integers(1, len(TRUE), battles)) % len(TRUE)
    ea, eb = np.exp(TRUE[first]), np.exp(TRUE[second])
    et = NU * np.sqrt(ea * eb)
    probs = np.stack([ea, eb, et], axis=1) / (ea + eb + et)[:, None]
    labels = np.eye(3)[[rng.choice(3, p=p) for p in probs]]
    return first, second, probs, labels, rng.integers(0, 200, battles)


def test_gradient_is_exact():
    rng = np.random.default_rng(1)
    weights = rng.random((4, 4, 3))
    assert check_grad(lambda p: _negative_log_likelihood(p, weights)[0], lambda p: _negative_log_likelihood(p, weights)[1],
                      rng.normal(size=5)) < 1e-5


def test_known_strengths_and_tie_rate_are_recovered_from_votes_and_from_probabilities():
    first, second, probs, labels, groups = simulate(20_000)
    voted = leaderboard(first, second, labels, list("abcde"), groups, bootstrap=60)
    np.testing.assert_allclose(voted["theta"], TRUE - TRUE.mean(), atol=0.06)
    assert abs(voted["nu"] - NU) < 0.05
    assert np.all(voted["low"] < voted["theta"]) and np.all(voted["theta"] < voted["high"])
    covered = (voted["low"] <= TRUE - TRUE.mean()) & (TRUE - TRUE.mean() <= voted["high"])
    assert covered.sum() >= 4  # 95% intervals
    expected = leaderboard(first, second, probs, list("abcde"), groups, bootstrap=0)  # expected outcomes, not argmax
    np.testing.assert_allclose(expected["theta"], TRUE - TRUE.mean(), atol=0.03)
    rate = voted["win_rate"]
    assert np.isnan(rate[0, 0]) and rate[0, 4] > 0.7 and abs(rate[0, 4] + rate[4, 0] - 1) < 1e-9


def test_command_writes_every_format_and_compares_with_the_human_leaderboard(tmp_path, capsys):
    first, second, probs, labels, groups = simulate(3_000, seed=2)
    names = np.array([f"bot-{k}" for k in range(len(TRUE))])
    lengths = np.random.default_rng(3).integers(1, 400, (2, 3_000))  # answers' style: lengths only (the other features never vary)
    battles = pd.DataFrame({"id": np.arange(3_000), "model_a": names[first], "model_b": names[second], "prompt": groups.astype(str),
                            "response_a": ["a" * n for n in lengths[0]], "response_b": ["b" * n for n in lengths[1]],
                            "winner_model_a": labels[:, 0], "winner_model_b": labels[:, 1], "winner_tie": labels[:, 2]})
    extra = pd.DataFrame({"id": [5000, 5001], "model_a": [None, "bot-1"], "model_b": ["bot-2", "bot-1"], "prompt": ["x", "y"],
                          "response_a": ["", ""], "response_b": ["", ""],
                          "winner_model_a": [1.0, 1.0], "winner_model_b": [0.0, 0.0], "winner_tie": [0.0, 0.0]})
    pq.write_table(pa.Table.from_pandas(pd.concat([battles, extra]), preserve_index=False), tmp_path / "battles.parquet")
    scores = tmp_path / "scores"
    scores.mkdir()
    part = {"id": np.arange(3_000), "model": ["m"] * 3_000, **{c: np.zeros(3_000, np.float32) for c in ("logit_a", "logit_b", "logit_tie")},
            "prob_a": probs[:, 0].astype(np.float32), "prob_b": probs[:, 1].astype(np.float32), "prob_tie": probs[:, 2].astype(np.float32),
            "swap_flip": [None] * 3_000, "tokens": np.zeros(3_000, np.int32), "computed_tokens": np.zeros(3_000, np.int32)}
    pq.write_table(pa.table(part, schema=SCORE_SCHEMA), scores / "part-0.parquet")
    out = tmp_path / "board"
    assert main(["leaderboard", "--battles", str(tmp_path / "battles.parquet"), "--scores", str(scores), "--out", str(out),
                 "--bootstrap", "30", "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["battles"] == 3_000 and summary["rejected"] == 2 and summary["outcomes"] == "scores"
    assert summary["top"] == [f"bot-{k}" for k in range(5)] and summary["spearman_vs_human"] == 1.0
    table = pq.read_table(out / "leaderboard.parquet").to_pandas()
    assert list(table["rank"]) == [1, 2, 3, 4, 5] and {"human_rating", "rating_low", "rating_high"} <= set(table.columns)
    assert pd.read_csv(out / "leaderboard.csv")["model"].tolist() == table["model"].tolist()
    assert (out / "leaderboard.md").read_text().startswith("| rank | style_rank | model | rating")
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(pq.read_table(out / "rejects.parquet").column("reject_reason").to_pylist()) == ["no_model_names", "same_model"]
    assert pq.read_table(out / "win_rate.parquet").num_rows == 20
    # Style control (both, the default): a style-controlled rating beside the plain one; length unrelated to the verdicts here.
    assert {"style_rank", "style_rating", "style_rating_low", "style_rating_high"} <= set(table.columns)
    coefficients = pd.read_csv(out / "style_coefficients.csv")
    assert coefficients["feature"].tolist() == ["length"] and coefficients["coefficient"].abs().max() < 0.05  # verdicts ignore length here
    assert sum("has no variance" in note for note in summary["notes"]) == 3 and summary["spearman_plain_vs_style"] > 0.9
    assert main(["leaderboard", "--battles", str(tmp_path / "battles.parquet"), "--scores", str(scores), "--out", str(tmp_path / "off"),
                 "--bootstrap", "0", "--style-control", "off"]) == 0
    assert "style_rating" not in pq.read_table(tmp_path / "off" / "leaderboard.parquet").column_names
