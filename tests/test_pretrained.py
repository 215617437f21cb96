"""Pretrained backbones (issue 18): torchvision:NAME and timm:NAME for both networks, --weights from a
local state_dict file (the tests write one: nothing is downloaded), the weights' normalisation, the image
size following the backbone, and the first-order fallback where forward-mode AD does not run through it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, write_imagefolder

from auxgen.config import TrainConfig, resolve_config
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy
from auxgen.maxl import meta_gradient
from auxgen.models import BACKBONES, LabelGenerator, MultiTaskNet, backbone_entry
from auxgen.steps import paper_objective as Objective

TV = "torchvision:resnet18"


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    """A resnet18 state_dict with random values, as torch.save writes it; and the tensors."""
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_registry_makes_pretrained_entries():
    entry = BACKBONES[TV]
    assert TV in BACKBONES and entry.pretrained and entry.forward_ad and entry.input_size == 224
    assert "torchvision:nope" not in BACKBONES and "nope:x" not in BACKBONES
    assert list(dict.keys(BACKBONES)) == ["vgg16", "resnet18", "cnn"]  # made on use, not added to the list
    with pytest.raises(AuxgenError, match="torchvision has no classification model 'nope'"):
        TrainConfig(backbone="torchvision:nope").validate()
    assert not backbone_entry("torchvision:vit_b_16").forward_ad


def test_weights_file_loads_into_both_networks_with_its_normalisation(tv_weights):
    path, state = tv_weights
    h = Hierarchy((2, 2))
    f = MultiTaskNet(TV, 3, 2, h.num_aux, weights=str(path))
    g = LabelGenerator(TV, 3, h, weights=str(path))
    for net in (f, g):
        assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])
        assert torch.equal(net.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
        assert net.normalize.mean == (0.485, 0.456, 0.406) and net.normalize.std == (0.229, 0.224, 0.225)
    x = torch.full((2, 1, 32, 32), 255, dtype=torch.uint8)  # greyscale broadcasts to the three channels
    assert f.normalize(x).shape == (2, 3, 32, 32)
    assert torch.allclose(f.normalize(x)[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                                     (1 - 0.406) / 0.225]))
    assert f(x)[0].shape == (2, 2)
    fresh = MultiTaskNet(TV, 3, 2, h.num_aux)  # no --weights: random initialisation, the same normalisation
    assert not torch.equal(fresh.backbone.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("content, message", [
    (b"not a torch file", "is not a torch state_dict file"),
    ("other", "does not fit backbone torchvision:resnet18: it lacks"),
    ("code", "is not a torch state_dict file"),
])
def test_bad_weights_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if content == "other":
        torch.save({"conv1.weight": torch.zeros(1)}, path)
    elif content == "code":  # a pickle naming a callable: weights_only refuses it, nothing runs
        import pickle

        class Evil:
            def __reduce__(self):
                return (print, ("ran",))
        path.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    else:
        path.write_bytes(content)
    with pytest.raises(AuxgenError, match=message) as e:
        MultiTaskNet(TV, 3, 2, 4, weights=str(path))
    assert "\n" not in str(e.value)


def test_options_are_checked():
    with pytest.raises(AuxgenError, match="--weights is for pretrained backbones"):
        TrainConfig(backbone="cnn", weights="DEFAULT").validate()
    with pytest.raises(AuxgenError, match="drop --width"):
        TrainConfig(backbone=TV, width=8).validate()
    with pytest.raises(AuxgenError, match="not a weights name of torchvision's resnet18; choose one of IMAGENET1K_V1"):
        MultiTaskNet(TV, 3, 2, 4, weights="IMAGENET9K")


def test_image_size_and_meta_order_follow_the_backbone(capsys):
    cfg = resolve_config(None, {"backbone": TV, "dataset": "imagefolder"})
    assert cfg.image_size == 224 and cfg.meta_order == 2
    assert resolve_config(None, {"backbone": TV, "image_size": 32}).image_size == 32  # given: honoured
    vit = resolve_config(None, {"backbone": "torchvision:vit_b_16"})
    assert vit.meta_order == 1 and "first-order meta-gradient" in capsys.readouterr().err
    assert resolve_config(None, {"backbone": "torchvision:vit_b_16", "preset": "paper"}).meta_order == 1
    with pytest.raises(AuxgenError, match="forward-mode AD"):  # asked for by name: refused, not changed
        resolve_config(None, {"backbone": "torchvision:vit_b_16", "meta_order": 2})


def test_forward_ad_of_families():
    """The registry's forward_ad facts of small members of the families, by a real exact meta step."""
    h = Hierarchy((2, 2))
    for name in ("torchvision:resnet18", "torchvision:mobilenet_v3_small"):
        assert backbone_entry(name).forward_ad
        torch.manual_seed(0)
        f = MultiTaskNet(name, 3, 2, h.num_aux).train()
        g = LabelGenerator("cnn", 3, h, width=4).train()
        x, y = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1])
        grads = meta_gradient(f, list(g.parameters()), x, y, g(x, y), Objective(alpha=0.1, meta_order=2)).gen_grads
        assert all(torch.isfinite(gr).all() for gr in grads)


def test_pretrained_run_trains_and_exports_without_its_weights_file(tmp_path, tv_weights):
    from auxgen.export.exporter import export_labels
    from auxgen.run import load_run
    from auxgen.trainer import train

    path, state = tv_weights
    weights = tmp_path / "copy.pth"
    weights.write_bytes(path.read_bytes())
    data = write_imagefolder(tmp_path / "data", classes=("cat", "dog"), per_class=5, size=12)
    out = tmp_path / "run"
    train(tiny_config(dataset="imagefolder", data_root=str(data), image_size=32, backbone=TV, width=None,
                      weights=str(weights), epochs=1, batch_size=4, meta_order=1), out, show=False)
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["weights"] == str(weights) and saved["backbone"] == TV
    weights.unlink()  # the checkpoint holds the weights now
    run = load_run(out)
    assert run.model.normalize.mean == (0.485, 0.456, 0.406)
    summary = export_labels(out, tmp_path / "labels.h5")
    assert summary


def test_timm_backbone(tmp_path):
    timm = pytest.importorskip("timm")
    name = "timm:resnet18"
    entry = backbone_entry(name)
    assert entry.pretrained and entry.forward_ad and entry.input_size == 224
    torch.manual_seed(2)
    state = timm.create_model("resnet18").state_dict()
    torch.save(state, tmp_path / "t.pt")
    f = MultiTaskNet(name, 3, 2, 4, weights=str(tmp_path / "t.pt"))
    assert torch.equal(f.backbone.conv1.weight, state["conv1.weight"])
    assert f(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))[1].shape == (2, 4)
    assert not backbone_entry("timm:vit_tiny_patch16_224").forward_ad
    with pytest.raises(AuxgenError, match="timm has no model"):
        TrainConfig(backbone="timm:nope_net").validate()


def test_named_weights_come_from_the_hub_read_weights_only(monkeypatch):
    import urllib.error

    import torchvision

    calls = []
    state = torchvision.models.resnet18().state_dict()

    def hub(url, *args, **kwargs):
        calls.append(kwargs)
        return state

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", hub)
    f = MultiTaskNet(TV, 3, 2, 4, weights="IMAGENET1K_V1")
    assert torch.equal(f.backbone.conv1.weight, state["conv1.weight"])
    assert calls[0]["weights_only"] is True and calls[0]["check_hash"] is True

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(AuxgenError, match=r"cannot get the weights .*offline, put them in the torch hub cache") as e:
        MultiTaskNet(TV, 3, 2, 4, weights="DEFAULT")
    assert "\n" not in str(e.value)


def test_a_weights_file_is_saved_as_an_absolute_path(tmp_path, monkeypatch, tv_weights):
    monkeypatch.chdir(tv_weights[0].parent)
    cfg = resolve_config(None, {"backbone": TV, "weights": tv_weights[0].name})
    assert cfg.weights == str(tv_weights[0].resolve())
    assert resolve_config(None, {"backbone": TV, "weights": "DEFAULT"}).weights == "DEFAULT"
