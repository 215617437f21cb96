"""The exported generator files (.pt2 via torch.export, .onnx via onnxruntime) against the in-process generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from auxgen.errors import AuxgenError
from auxgen.export.generator_files import (
    GENERATOR_ATOL,
    check_generator_file,
    generator_path,
    load_generator,
    onnx_session,
    parse_generator_formats,
    save_generator,
)
from auxgen.hierarchy import Hierarchy
from auxgen.models import LabelGenerator

PSI = (2, 3, 1, 4)  # uneven blocks, so a wrong mask cannot hide


@pytest.fixture(scope="module")
def gen() -> LabelGenerator:
    """A tiny cnn (width 4) generator on digits-shaped images, with batch-norm statistics far from 0 and 1.

    With such running statistics a file whose batch norm ran in training mode (batch statistics) gives
    other labels, so the comparisons below also check that the exported programs are in eval mode.
    """
    torch.manual_seed(0)
    g = LabelGenerator("cnn", 1, Hierarchy(PSI), width=4)
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.2, 3)
    g.head[-1].weight.data.mul_(20)  # large logits: the masked softmax must neither overflow nor leak
    return g.train()  # the exporter must switch to eval itself


@pytest.fixture(scope="module")
def files(gen, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("gen")
    x, y = inputs(8)
    meta = {"psi": list(PSI), "num_aux": sum(PSI)}
    paths = {}
    for fmt in ("pt2", "onnx"):
        paths[fmt] = root / f"g.h5.generator.{fmt}"
        paths[f"{fmt}_entry"] = save_generator(gen, paths[fmt], fmt, meta, (x, y))
    return paths


def inputs(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
            torch.randint(0, len(PSI), (n,), generator=g))


def in_process(gen: LabelGenerator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    was = gen.training
    gen.eval()
    try:
        with torch.inference_mode():
            return gen(x, y)
    finally:
        gen.train(was)


@pytest.mark.parametrize("n", [1, 37, 300])
def test_pt2_is_bit_exact_for_any_batch(gen, files, n):
    x, y = inputs(n, seed=n)
    module = torch.export.load(str(files["pt2"])).module()  # plain torch: no auxgen class involved
    with torch.inference_mode():
        out = module(x, y)
    assert out.shape == (n, sum(PSI)) and out.dtype == torch.float32
    assert torch.equal(out, in_process(gen, x, y))


@pytest.mark.parametrize("n", [1, 37, 300])
def test_onnx_matches_within_tolerance_and_keeps_exact_zeros(gen, files, n):
    x, y = inputs(n, seed=n)
    session = onnx_session(files["onnx"], threads=1)
    assert [i.name for i in session.get_inputs()] == ["images", "primary"]
    out = session.run(None, {"images": x.numpy(), "primary": y.numpy()})[0]  # numpy in, numpy out
    ref = in_process(gen, x, y).numpy()
    assert out.shape == (n, sum(PSI)) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= GENERATOR_ATOL["onnx"]
    block = Hierarchy(PSI).mask(y).numpy()
    assert (out[~block] == 0).all() and np.allclose(out.sum(1), 1, atol=1e-6)


def test_files_carry_metadata_and_versions(files):
    assert files["pt2_entry"]["format"] == "pt2" and files["pt2_entry"]["torch_version"] == \
        torch.__version__.split("+")[0]
    assert files["onnx_entry"]["opset"] >= 17
    for fmt in ("pt2", "onnx"):
        _, meta = load_generator(files[fmt])
        assert meta["psi"] == list(PSI) and meta["num_aux"] == sum(PSI)
    raw = onnx_session(files["onnx"]).get_modelmeta().custom_metadata_map["auxgen.json"]
    assert json.loads(raw)["psi"] == list(PSI)


def test_check_generator_file_catches_another_generator(gen, files):
    x, y = inputs(64)
    assert check_generator_file(gen, files["pt2"], "pt2", x, y) is None
    torch.manual_seed(5)
    other = LabelGenerator("cnn", 1, Hierarchy(PSI), width=4)
    for fmt in ("pt2", "onnx"):
        assert "max abs diff" in check_generator_file(other, files[fmt], fmt, x, y)


def test_format_choices(tmp_path):
    assert parse_generator_formats("onnx, pt2") == ("pt2", "onnx")
    assert parse_generator_formats(["torchscript"]) == ("torchscript",)
    assert parse_generator_formats(None) == () == parse_generator_formats("")
    with pytest.raises(AuxgenError, match="--generator-format 'tflite'"):
        parse_generator_formats("pt2,tflite")
    assert generator_path(tmp_path / "x.h5", "hdf5", "onnx").name == "x.h5.generator.onnx"
    assert generator_path(tmp_path / "shards", "wds", "pt2") == tmp_path / "shards" / "generator.pt2"


def test_a_shape_input_generator_exports_to_both_formats(tmp_path):
    """--gen-input shape puts the shape map (power iteration, no eigen-solver) inside the generator: the files
    must carry it and agree with the module on colour images."""
    torch.manual_seed(0)
    g = LabelGenerator("cnn", 3, Hierarchy(PSI), width=4, shape_input=True).eval()
    gen_rng = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (9, 3, 12, 12), generator=gen_rng, dtype=torch.uint8)
    y = torch.randint(0, len(PSI), (9,), generator=gen_rng)
    meta = {"psi": list(PSI), "num_aux": sum(PSI)}
    for fmt in ("pt2", "onnx"):
        path = tmp_path / f"g.{fmt}"
        save_generator(g, path, fmt, meta, (x[:4], y[:4]))
        assert check_generator_file(g, path, fmt, x, y) is None
