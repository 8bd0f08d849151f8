import pytest

from regtune.data import PairSampler, all_pairs, read_pairs_csv, sample_pairs, split_subjects, write_pairs_csv
from regtune.errors import DataError


def test_split_is_subject_level_and_seeded(vols):
    s = split_subjects(vols, 3, seed=5)
    assert len(s.val) == 3 and not set(s.val) & set(s.train) and len(s.train) == 5
    assert split_subjects(vols, 3, seed=5) == s
    assert split_subjects(vols, 3, seed=6) != s
    with pytest.raises(DataError, match="val_subjects"):
        split_subjects(vols, 7, seed=0)


def test_pairs_and_sampler(vols):
    assert len(all_pairs([0, 1, 2])) == 6
    vp = sample_pairs((0, 1, 2, 3), 5, seed=0)
    assert len(vp) == 5 and all(f != m for f, m in vp) and vp == sample_pairs((0, 1, 2, 3), 5, seed=0)
    s = PairSampler((0, 2, 4), "random", seed=0)
    f, m = s(64)
    assert (f != m).all() and set(f.tolist()) <= {0, 2, 4}
    s = PairSampler((0, 2, 4), "all", seed=0)
    seen = set()
    for _ in range(3):
        f, m = s(2)
        seen |= set(zip(f.tolist(), m.tolist()))
    assert seen == set(all_pairs((0, 2, 4)))


def test_pairs_csv_roundtrip_and_errors(vols, tmp_path):
    p = tmp_path / "pairs.csv"
    write_pairs_csv(p, [(0, 1), (2, 3)], vols)
    assert read_pairs_csv(p, vols) == [(0, 1), (2, 3)]
    p.write_text("fixed,moving\nsynth_001.nii.gz,nobody.nii.gz\n")
    with pytest.raises(DataError, match="line 2: 'nobody'"):
        read_pairs_csv(p, vols)
    p.write_text("a,b\n")
    with pytest.raises(DataError, match="header"):
        read_pairs_csv(p, vols)


def test_test_split_is_fixed_by_its_seed_and_size_only(vols):
    a = split_subjects(vols, 2, seed=4, test_subjects=2)
    b = split_subjects(vols, 3, seed=4, test_subjects=2)
    assert a.test == b.test and len(a.test) == 2
    for s in (a, b):
        assert not set(s.test) & (set(s.train) | set(s.val)) and not set(s.val) & set(s.train)
        assert sorted(s.train + s.val + s.test) == list(range(len(vols)))
    with pytest.raises(DataError, match="test_subjects"):
        split_subjects(vols, 3, seed=0, test_subjects=4)
    assert a.role(a.test[0]) == "test" and a.role(a.train[0]) == "train"
