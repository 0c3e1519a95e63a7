"""Architectures, images_to_tensor, build_model and the model file round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmgcore.models import (
    CONV_KERNELS,
    LOGIT_CLAMP,
    build_model,
    images_to_tensor,
    num_parameters,
    tensor_shape,
)
from stages.modelio import load_model, save_model


def _convs(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("arch", sorted(CONV_KERNELS))
def test_conv_encoder_layout(arch: str) -> None:
    model = build_model({"architecture": arch, "observation_shape": [64, 64, 3]})
    convs = _convs(model)
    assert tuple(c.kernel_size[0] for c in convs) == CONV_KERNELS[arch]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    h = torch.zeros(2, 3, 64, 64)
    sizes = []
    for c in convs:
        h = c(h)
        sizes.append(h.shape[-1])
    assert sizes == [32, 16, 8, 4]  # TF "same" padding with stride 2


def test_dlib_parameter_count_matches_reference() -> None:
    # disentanglement_lib conv_encoder + deconv_decoder on 64×64×3 with d = 10 has 692,567
    # parameters (measured on the reference implementation, shared/research/gmg_solver.md §3.3).
    model = build_model({"architecture": "dlib_conv", "observation_shape": [64, 64, 3]})
    assert num_parameters(model) == 692_567
    # The all-kernel-4 HFS encoder has 4·4-2·2 more weights per input·output channel pair in
    # its last two convs: 12·(32·64 + 64·64) more parameters.
    hfs = build_model({"architecture": "hfs_conv", "observation_shape": [64, 64, 3]})
    assert num_parameters(hfs) - num_parameters(model) == 12 * (32 * 64 + 64 * 64)


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 3)])
@pytest.mark.parametrize("arch", ["dlib_conv", "hfs_conv", "mlp"])
def test_forward_shapes(arch: str, shape: tuple[int, ...]) -> None:
    model = build_model(
        {"architecture": arch, "observation_shape": list(shape), "latent_dim": 7, "hidden": [16]}
    )
    x = torch.rand(3, *tensor_shape(shape))
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, 7)
    assert out.logits.shape == x.shape
    assert model.latent_dim == 7
    assert model.reconstruct(x).shape == x.shape


def test_images_to_tensor_layout_and_range() -> None:
    gray = np.zeros((2, 64, 64), np.uint8)
    gray[0, 3, 5] = 255
    colour = np.zeros((2, 64, 64, 3), np.uint8)
    colour[1, 4, 6, 2] = 51
    tg, tc = images_to_tensor(gray), images_to_tensor(torch.from_numpy(colour))
    assert tg.shape == (2, 1, 64, 64) and tg.dtype == torch.float32
    assert tg[0, 0, 3, 5] == 1.0 and tg.sum() == 1.0
    assert tc.shape == (2, 3, 64, 64) and tc[1, 2, 4, 6] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(gray.astype(np.float32))


def test_bernoulli_logits_are_clamped() -> None:
    model = build_model({"architecture": "mlp", "observation_shape": [4, 4], "hidden": [8]})
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.fill_(100.0)
    logits = model.decode(torch.ones(2, model.latent_dim))
    assert logits.abs().max() == LOGIT_CLAMP


def test_build_model_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        build_model({"latent": 3})
    with pytest.raises(ValueError, match="architecture"):
        build_model({"architecture": "resnet"})
    with pytest.raises(ValueError, match="64×64"):
        build_model({"architecture": "dlib_conv", "observation_shape": [32, 32]})


def test_model_file_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(
        {
            "architecture": "hfs_conv",
            "observation_shape": [64, 64],
            "latent_dim": 5,
            "likelihood": "gaussian",
        }
    )
    save_model(tmp_path / "model.pt", model)
    loaded = load_model(tmp_path / "model.pt")
    assert not loaded.training and loaded.likelihood == "gaussian" and loaded.latent_dim == 5
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
