"""Label trees beyond CIFAR-100: two-level ImageFolder trees (coarse = primary, fine = human)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from auxgen.errors import AuxgenError
from auxgen.trainer import setup


def _tree(root: Path, spec: dict[str, tuple[str, ...]], per: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for coarse, fines in spec.items():
        for fine in fines:
            d = root / coarse / fine
            d.mkdir(parents=True)
            for i in range(per):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_two_level_imagefolder_gives_psi_and_human_labels(tmp_path):
    root = _tree(tmp_path / "t", {"animal": ("cat", "dog", "owl"), "vehicle": ("bus", "car")})
    cfg = tiny_config(dataset="imagefolder", data_root=str(root), hierarchy_depth=2, method="human",
                      image_size=8, batch_size=8)
    run = setup(cfg)
    d = run.data
    assert d.class_names == ["animal", "vehicle"] and run.hier.psi == (3, 2)
    assert d.fine_names == ["animal/cat", "animal/dog", "animal/owl", "vehicle/bus", "vehicle/car"]
    assert d.fine_parent == [0, 0, 0, 1, 1]
    for split in (d.train, d.test):  # every image's fine label is the folder it sits in
        for key, f, y in zip(split.keys, split.fine.tolist(), split.labels.tolist(), strict=True):
            assert d.fine_names[f] == "/".join(key.split("/")[:2]) and d.fine_parent[f] == y
    assert torch.equal(run.hier.block_id()[run.targets.labels], d.train.labels)


def test_two_level_imagefolder_refuses_images_at_the_wrong_depth(tmp_path):
    root = _tree(tmp_path / "t", {"a": ("x", "y"), "b": ("z",)})
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "a" / "stray.png")
    with pytest.raises(AuxgenError, match="COARSE/FINE/IMAGE"):
        setup(tiny_config(dataset="imagefolder", data_root=str(root), hierarchy_depth=2, image_size=8,
                          batch_size=4))


def test_hierarchy_options_need_their_datasets():
    with pytest.raises(AuxgenError, match="primary-groups"):
        tiny_config(primary_groups=3)
    with pytest.raises(AuxgenError, match="hierarchy-depth"):
        tiny_config(hierarchy_depth=2)  # digits is no imagefolder
