import json

import pytest
import torch

from auxgen.errors import AuxgenError
from auxgen.hierarchy import CIFAR100_FINE_NAMES, Hierarchy, cifar100_fine_to, cifar100_human, cifar100_names, parse_psi

# the fine -> coarse map every CIFAR-100 user knows (the dataset's own coarse_labels), written out
# independently of the name tables it is checked against
COARSE_OF_FINE = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3,
                  15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0,
                  17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19,
                  2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def test_blocks_offsets_and_mask():
    h = Hierarchy((2, 2, 1))
    assert h.num_aux == 5 and h.num_primary == 3 and h.offsets == (0, 2, 4)
    assert h.block_id().tolist() == [0, 0, 1, 1, 2]
    m = h.mask(torch.tensor([1, 2, 0]))
    assert m.tolist() == [[False, False, True, True, False], [False] * 4 + [True], [True, True, False, False, False]]


def test_parse_psi_forms(tmp_path):
    assert parse_psi("5", None, 3).psi == (5, 5, 5)
    assert parse_psi(None, None, 2).psi == (5, 5)
    assert parse_psi("2,3,4", None, 3).psi == (2, 3, 4)
    f = tmp_path / "h.json"
    f.write_text(json.dumps({"psi": [1, 2]}))
    assert parse_psi(None, f, 2).psi == (1, 2)
    f.write_text("[3, 1]")
    assert parse_psi(None, f, 2).psi == (3, 1)


@pytest.mark.parametrize("spec,n,msg", [("2,3", 3, "2 entries but the dataset has 3"), ("2,0,1", 3, "positive"),
                                        ("a,b", 2, "comma-separated"), ("-1", 2, "positive")])
def test_bad_psi(spec, n, msg):
    with pytest.raises(AuxgenError, match=msg):
        parse_psi(spec, None, n)


def test_bad_psi_file(tmp_path):
    with pytest.raises(AuxgenError, match="does not exist"):
        parse_psi(None, tmp_path / "none.json", 2)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AuxgenError, match="not valid JSON"):
        parse_psi(None, tmp_path / "bad.json", 2)
    (tmp_path / "b.json").write_text('{"psi": "x"}')
    with pytest.raises(AuxgenError, match="list"):
        parse_psi(None, tmp_path / "b.json", 2)
    with pytest.raises(AuxgenError, match="not both"):
        parse_psi("2", tmp_path / "b.json", 2)


def test_cifar100_levels_match_the_dataset():
    assert len(CIFAR100_FINE_NAMES) == 100 and CIFAR100_FINE_NAMES[:3] == ("apple", "aquarium_fish", "baby")
    assert cifar100_fine_to(20).tolist() == COARSE_OF_FINE
    assert cifar100_fine_to(100).tolist() == list(range(100))
    for level in (3, 10, 20):
        assert sorted(set(cifar100_fine_to(level).tolist())) == list(range(level))
        assert len(cifar100_names(level)) == level
    # coarser levels are functions of finer ones: every coarse class lies in exactly one level-10 class
    c20, c10, c3 = cifar100_fine_to(20), cifar100_fine_to(10), cifar100_fine_to(3)
    for c in range(20):
        assert len(set(c10[c20 == c].tolist())) == 1
    for c in range(10):
        assert len(set(c3[c10 == c].tolist())) == 1


def test_human_hierarchy_shapes_and_labels():
    assert cifar100_human(3, 10)[0].psi == (5, 1, 4)
    assert cifar100_human(20, 100)[0].psi == (5,) * 20
    for p, a in [(3, 10), (3, 20), (3, 100), (10, 20), (10, 100), (20, 100)]:
        hier, aux_of_fine = cifar100_human(p, a)
        assert hier.num_aux == a
        pri = cifar100_fine_to(p)
        # each fine class's auxiliary label lies in its primary block, and the re-indexing is a bijection
        # of the aux-level classes onto 0..a-1
        assert torch.equal(hier.block_id()[aux_of_fine], pri)
        pairs = set(zip(cifar100_fine_to(a).tolist(), aux_of_fine.tolist(), strict=True))
        assert len(pairs) == a and len({b for _, b in pairs}) == a
    with pytest.raises(AuxgenError, match="finer"):
        cifar100_human(20, 10)


@pytest.mark.parametrize("spec,msg", [("", "--psi is empty"), (" ", "--psi is empty"), ("2,,3", "empty item"),
                                      ("3,", "empty item"), ("1001", "limit of 1000"), ("２", "not an integer")])
def test_psi_specs_that_are_refused(spec, msg):
    with pytest.raises(AuxgenError, match=msg):
        parse_psi(spec, None, 3)


def test_psi_caps_per_class_and_in_all(tmp_path):
    assert parse_psi("1000", None, 10).num_aux == 10000
    with pytest.raises(AuxgenError, match="11000 auxiliary classes in all .* limit of 10000"):
        parse_psi("1000", None, 11)
    f = tmp_path / "h.json"
    f.write_text("[5000, 1]")
    with pytest.raises(AuxgenError, match="entry 1 is 5000, over the limit of 1000"):
        parse_psi(None, f, 2)


def test_psi_file_that_is_a_folder_or_not_utf8(tmp_path):
    with pytest.raises(AuxgenError, match="is a folder"):
        parse_psi(None, tmp_path, 2)
    f = tmp_path / "h.json"
    f.write_bytes(b"[2, \xff]")
    with pytest.raises(AuxgenError, match="not UTF-8"):
        parse_psi(None, f, 2)
