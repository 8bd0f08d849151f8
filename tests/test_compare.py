"""Paired comparison of two evaluations (regtune compare)."""

import csv
import math
import statistics

import pytest

from regtune.cli import main
from regtune.compare import compare, read_pairs
from regtune.errors import DataError


def _write(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    with (path / "pairs.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["fixed", "moving", "dice", "hd95", "warped_intensity"])
        w.writeheader()
        for (f, m), d, h in rows:
            w.writerow({"fixed": f, "moving": m, "dice": d, "hd95": h, "warped_intensity": 0.5})
    return path


PAIRS = [("s1", "s2"), ("s2", "s1"), ("s3", "s4"), ("s4", "s3"), ("s5", "s6")]
A = [0.80, 0.82, 0.70, 0.75, 0.90]
B = [0.79, 0.80, 0.71, 0.72, 0.88]
HA = [2.0, 1.5, 3.0, float("nan"), 1.0]
HB = [2.0, 1.7, 2.5, 2.2, 1.4]


def test_paired_difference_standard_error_and_direction(tmp_path):
    _, a = read_pairs(_write(tmp_path / "a", zip(PAIRS, A, HA)))
    _, b = read_pairs(_write(tmp_path / "b", zip(reversed(PAIRS), B[::-1], HB[::-1])))
    dice, hd = compare(a, b, ("dice", "hd95"))
    d = [x - y for x, y in zip(A, B)]  # pairs matched by name, not by row order
    assert dice.n == 5 and math.isclose(dice.diff, statistics.mean(d))
    assert math.isclose(dice.se, statistics.stdev(d) / math.sqrt(5)) and math.isclose(dice.z, dice.diff / dice.se)
    assert (dice.a_better, dice.b_better) == (4, 1)
    # HD95: lower is better; the NaN pair drops out of this metric only; a tie counts for neither
    assert hd.n == 4 and math.isclose(hd.diff, statistics.mean([0.0, -0.2, 0.5, -0.4]))
    assert (hd.a_better, hd.b_better) == (2, 1)


def test_different_pairs_and_bad_files_are_refused(tmp_path):
    _, a = read_pairs(_write(tmp_path / "a", zip(PAIRS, A, HA)))
    _, b = read_pairs(_write(tmp_path / "b", zip(PAIRS[:4], B, HB)))
    with pytest.raises(DataError, match="scored different pairs .5 and 4, 4 in common"):
        compare(a, b)
    with pytest.raises(DataError, match="unknown metric 'warped_intensity'"):
        compare(a, a, ("warped_intensity",))
    (tmp_path / "c.csv").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not a pairs.csv"):
        read_pairs(tmp_path / "c.csv")
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "nothing")


def test_cli_prints_the_table_and_one_line_errors(tmp_path, capsys):
    a = _write(tmp_path / "a", zip(PAIRS, A, HA))
    b = _write(tmp_path / "b", zip(PAIRS, B, HB))
    assert main(["compare", str(a), str(b / "pairs.csv")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("dice "))
    assert "+0.0140" in line and "4 / 1" in line and f"A = {a}, B = {b}" in out
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and len(err.strip().splitlines()) == 1
