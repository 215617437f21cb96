"""Issue 25, dataset inputs: csv lists and Hugging Face tables made by others (a csv naming one image twice
in two spellings, long lists, line numbers, unbalanced quotes; a save_to_disk folder whose state.json
names files elsewhere; integer labels with gaps; an empty table). Each case is a one-line AuxgenError or
a correct load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import tiny_config
from test_inputs import _png, write_csv

from auxgen.compose import load_data
from auxgen.errors import AuxgenError


def _load(path, **kw):
    return load_data(tiny_config(dataset=kw.pop("dataset", "csv"), data_root=str(path), image_size=8, **kw))


def _refused(path, match, **kw):
    with pytest.raises(AuxgenError, match=match) as e:
        _load(path, **kw)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    return str(e.value)


def _append(listed, *rows):
    listed.write_text(listed.read_text() + "".join(r + "\n" for r in rows))


# ------------------------------------------------------------------------------ 1. one image, two spellings
@pytest.mark.parametrize("spelling", ["./img/cat1.png", "img//cat1.png", "img/../img/cat1.png", "img/./cat1.png",
                                      "img/alias.png"])
def test_csv_one_image_spelled_twice_with_two_labels_is_refused(tmp_path, spelling):
    listed = write_csv(tmp_path / "d")  # header on line 1, img/cat1.png,cat on line 3, 9 lines
    os.symlink("cat1.png", tmp_path / "d" / "img" / "alias.png")
    _append(listed, f"{spelling},dog")
    message = _refused(listed, r"lines 3 and 10 list one image \('img/cat1.png' and .*\) with labels 'cat' and 'dog'")
    assert spelling in message


def test_csv_one_image_spelled_twice_with_one_label_is_refused(tmp_path):
    listed = write_csv(tmp_path / "d")
    _append(listed, "./img/cat1.png,cat")
    _refused(listed, r"lists img/cat1.png twice \(lines 3 and 10: 'img/cat1.png' and './img/cat1.png'\)")


def test_csv_keys_are_normalised_and_stay_inside(tmp_path):
    listed = write_csv(tmp_path / "d", header=False)
    listed.write_text(listed.read_text().replace("img/cat0.png", "./img/cat0.png")
                      .replace("img/dog0.png", "img/../img//dog0.png"))
    data = _load(listed)
    keys = sorted(data.train.keys + data.test.keys)
    assert keys[0] == "img/cat0.png" and "img/dog0.png" in keys and len(keys) == 8
    (tmp_path / "outside.png").write_bytes(_png(np.random.default_rng(0)))
    for escape in ("img/../../outside.png", "./..", ".", "img/..//../outside.png"):
        _append(listed, f"{escape},cat")
        _refused(listed, f"line 9: {escape!r} is not a relative path inside")
        listed.write_text("".join(listed.read_text().splitlines(keepends=True)[:-1]))


# ------------------------------------------------------------------------------ 2. the duplicate check is linear
def test_csv_duplicates_found_in_a_long_list(tmp_path):
    (tmp_path / "img").mkdir()
    n = 3000
    for i in range(n):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"x")  # refused before any decoding
    lines = ["path,label"] + [f"img/{i}.png,{i % 2}" for i in range(n)] + ["./img/0.png,1"]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    _refused(tmp_path / "l.csv", rf"lines 2 and {n + 2} list one image .* labels '0' and '1'")


# ------------------------------------------------------------------------------ 3. line numbers an editor shows
def test_csv_errors_give_the_files_line_numbers(tmp_path):
    listed = write_csv(tmp_path / "d")  # 9 lines
    _append(listed, "", "  ", "img/missing.png,cat")  # lines 10, 11 blank; 12
    _refused(listed, r"list.csv line 12: .*missing.png does not exist")
    listed = write_csv(tmp_path / "e", fine=True)
    text = listed.read_text().replace("img/cat1.png,cat,cat-1\n", "img/cat1.png,cat,cat-1\n\n\n")
    listed.write_text(text.replace("img/dog1.png,dog,dog-1", "img/dog1.png,dog, "))
    _refused(listed, r"csv: .*list.csv line 9 has an empty fine label")  # header, 2 blank lines and 5 rows before it
    _append(listed.parent / "list.csv", "img/cat0.png")
    _refused(listed, r"list.csv line 12 has 1 fields")


def test_csv_line_numbers_count_windows_line_ends_and_quoted_fields(tmp_path):
    listed = write_csv(tmp_path / "d")
    rows = listed.read_text().splitlines()
    rows[1] = '"img/cat0.png","cat"'
    listed.write_bytes("\r\n".join(rows + ["", "img/none.png,dog"]).encode() + b"\r\n")
    _refused(listed, r"line 11: .*none.png does not exist")


# ------------------------------------------------------------------------------ 4. unbalanced quotes
@pytest.mark.parametrize("row, match", [
    ('img/cat0.png,"cat', r"list.csv line 10: .*quote"),  # never closed: runs to the end of the file
    ('"img/cat0.png,cat', r"list.csv line 10: .*quote"),
    ('img/cat0.png,"cat"" ', r"list.csv line 10: .*quote"),  # a doubled quote inside, none to close
])
def test_csv_unbalanced_quote_is_one_line(tmp_path, row, match):
    listed = write_csv(tmp_path / "d")
    _append(listed, row)
    _refused(listed, match)
    listed = write_csv(tmp_path / "e")  # in the middle, closed by a later quote: rows swallowed
    lines = listed.read_text().splitlines()
    listed.write_text("\n".join(lines[:3] + [row] + lines[3:] + ['img/dog3.png,"dog']) + "\n")
    _refused(listed, r"list.csv line 4: .*quote")


def test_csv_huge_field_is_one_line(tmp_path):
    listed = write_csv(tmp_path / "d")  # an unclosed quote early in a long list makes one field of the rest
    _append(listed, 'img/cat0.png,"' + "x" * 200_000 + '"')
    _refused(listed, r"list.csv line 10: .*field larger than field limit")
    listed.write_text('path,label\nimg/cat0.png,"cat\n' + "img/cat1.png,cat\n" * 20_000)
    _refused(listed, r"list.csv line 2: .*field larger than field limit")


# ------------------------------------------------------------------------------ 5. save_to_disk stays in its folder
def _saved(tmp_path, n=10, labels=None, names=("ant", "bee"), split=True):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png(rng), "path": None} for _ in range(n)],
                                     "label": labels if labels is not None else [i % 2 for i in range(n)]})
    ds = ds.cast_column("image", datasets.Image())
    if names:
        ds = ds.cast_column("label", datasets.ClassLabel(names=list(names)))
    root = tmp_path / "saved"
    (datasets.DatasetDict({"train": ds}) if split else ds).save_to_disk(str(root))
    return root


def _state(folder):
    return json.loads((folder / "state.json").read_text())


def _name_file(folder, filename):
    state = _state(folder)
    state["_data_files"][0]["filename"] = filename
    (folder / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("split", [True, False])
def test_hf_state_json_naming_a_file_elsewhere_is_refused(tmp_path, split):
    root = _saved(tmp_path, split=split)
    folder = root / "train" if split else root
    arrow = folder / _state(folder)["_data_files"][0]["filename"]
    assert len(_load(root, dataset="hf").train) == 8  # as saved it loads
    outside = tmp_path / "x.arrow"
    outside.write_bytes(arrow.read_bytes())
    _name_file(folder, os.path.relpath(outside, folder))  # ../x.arrow or ../../x.arrow
    _refused(root, r"names data file '\.\./.*x.arrow', which is not inside", dataset="hf")
    _name_file(folder, str(outside))
    _refused(root, r"which is not inside", dataset="hf")
    _name_file(folder, "inside.arrow")
    os.symlink(outside, folder / "inside.arrow")  # a link out
    _refused(root, r"names data file 'inside.arrow', which is not inside", dataset="hf")
    _name_file(folder, "gone.arrow")
    _refused(root, r"gone.arrow does not exist", dataset="hf")


def test_hf_links_out_of_a_saved_folder_are_refused(tmp_path):
    root = _saved(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (root / "train").rename(elsewhere)
    os.symlink(elsewhere, root / "train")
    _refused(root, r"train leads outside", dataset="hf")
    os.unlink(root / "train")
    (elsewhere).rename(root / "train")
    (root / "train" / "state.json").rename(tmp_path / "state.json")
    os.symlink(tmp_path / "state.json", root / "train" / "state.json")
    _refused(root, r"state.json leads outside", dataset="hf")


def test_hf_damaged_saved_folder_is_one_line(tmp_path):
    root = _saved(tmp_path)
    (root / "train" / "state.json").write_text("{not json")
    _refused(root, r"state.json is not JSON", dataset="hf")
    (root / "train" / "state.json").write_text(json.dumps({"_data_files": "x"}))
    _refused(root, r"lists no data files", dataset="hf")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    _refused(root, r"has splits test but no train split", dataset="hf")
    (root / "dataset_dict.json").unlink()
    _refused(root, r"is not a dataset saved with save_to_disk", dataset="hf")


# ------------------------------------------------------------------------------ 6. labels that occur, not a range
def _parquet(path, labels):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(3)
    pq.write_table(pa.table({"image": [_png(rng) for _ in labels], "label": labels}), path)
    return path


def test_hf_integer_labels_with_gaps_are_the_labels_that_occur(tmp_path, capsys):
    data = _load(_parquet(tmp_path / "g.parquet", [0, 7] * 5), dataset="hf")
    assert data.num_classes == 2 and data.class_names == ["0", "7"]
    assert sorted(set(data.train.labels.tolist() + data.test.labels.tolist())) == [0, 1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labels 0, 7 (2 values, not 0..1)" in err
    data = _load(_parquet(tmp_path / "h.parquet", [3, 10 ** 12] * 5), dataset="hf")  # no range(10**12)
    assert data.class_names == ["3", str(10 ** 12)]
    _load(_parquet(tmp_path / "d.parquet", [0, 1] * 5), dataset="hf")
    assert capsys.readouterr().err.count("note:") == 1  # only the gapped 3, 10**12 above: dense labels say nothing


def test_hf_class_label_names_are_kept(tmp_path, capsys):
    root = _saved(tmp_path, labels=[0, 2] * 5, names=("ant", "bee", "cat"))
    data = _load(root, dataset="hf")
    assert data.class_names == ["ant", "bee", "cat"] and "note:" not in capsys.readouterr().err


def test_hf_empty_table_says_no_rows(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}),
                   tmp_path / "e.parquet")
    _refused(tmp_path / "e.parquet", r"hf: .*e.parquet has no rows", dataset="hf")
    _refused(_saved(tmp_path, n=0), r"hf: .*saved/train has no rows", dataset="hf")
