"""The CPU kernels of pipelines.screening.cpu_layers give the layers' own results, and only where they apply."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from pipelines.screening.backend import network_backend
from pipelines.screening.cpu_layers import NativeConvTranspose3d, ShiftAddConv3d, use_cpu_layers
from pipelines.screening.settings import ScreeningSettings


def _bundle_unet() -> UNet:
    torch.manual_seed(3)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=[16, 32, 64, 128],
        strides=[2, 2, 2],
        num_res_units=2,
        norm="instance",
    ).eval()


@pytest.mark.parametrize(
    ("kernel", "padding", "bias"),
    [(3, 1, True), ((3, 1, 5), (1, 0, 2), False), (3, 0, True), (1, 0, True)],
)
def test_shift_add_conv_equals_the_convolution(kernel, padding, bias) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 1, kernel, padding=padding, bias=bias).eval()
    fast = copy.deepcopy(conv)
    use_cpu_layers(fast)
    assert type(fast) is ShiftAddConv3d
    x = torch.randn(3, 1, 11, 9, 13)
    with torch.inference_mode():
        want, got = conv(x), fast(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_native_transpose_equals_the_layer_with_and_without_output_size() -> None:
    torch.manual_seed(1)
    conv = nn.ConvTranspose3d(8, 1, 3, stride=2, padding=1, output_padding=1).eval()
    fast = copy.deepcopy(conv)
    use_cpu_layers(fast)
    assert type(fast) is NativeConvTranspose3d
    x = torch.randn(2, 8, 5, 6, 7)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=1e-5)
        odd = [9, 11, 13]  # output_size picks output_padding 0
        torch.testing.assert_close(fast(x, output_size=odd), conv(x, output_size=odd), rtol=0, atol=1e-5)
        assert fast(x, output_size=odd).shape[2:] == torch.Size(odd)


def test_bundle_unet_switched_gives_the_same_logits_and_keeps_its_state_dict() -> None:
    net = _bundle_unet()
    fast = copy.deepcopy(net)
    counts = use_cpu_layers(fast)
    assert counts == {"shift_add_conv3d": 1, "native_conv_transpose3d": 1}  # the two top layers only
    assert list(fast.state_dict()) == list(net.state_dict())
    assert use_cpu_layers(fast) == {"shift_add_conv3d": 0, "native_conv_transpose3d": 0}  # idempotent
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.inference_mode():
        want, got = net(x), fast(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_other_layers_and_training_keep_pytorch_own_path() -> None:
    wide = nn.Conv3d(2, 1, 3, padding=1)
    strided = nn.Conv3d(1, 1, 3, stride=2, padding=1)
    many = nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1)
    model = nn.Sequential(wide, strided, many)
    assert use_cpu_layers(model) == {"shift_add_conv3d": 0, "native_conv_transpose3d": 0}
    assert (type(wide), type(strided), type(many)) == (nn.Conv3d, nn.Conv3d, nn.ConvTranspose3d)

    conv = nn.Conv3d(1, 1, 3, padding=1)
    fast = copy.deepcopy(conv)
    use_cpu_layers(fast)
    x = torch.randn(1, 1, 6, 6, 6)
    out = fast(x)  # gradients recorded: the layer's own forward, so training is unchanged
    out.sum().backward()
    assert fast.weight.grad is not None
    torch.testing.assert_close(out, conv(x))


@pytest.mark.parametrize("enabled", [True, False])
def test_network_backend_switches_on_the_cpu_only_when_asked(enabled: bool) -> None:
    net = _bundle_unet()
    settings = ScreeningSettings(cpu_layers=enabled, backend="torch")
    out, name = network_backend(net, settings=settings, device=torch.device("cpu"))
    assert name == "torch" and out is net
    kinds = {type(m) for m in net.modules()}
    assert (ShiftAddConv3d in kinds) is enabled and (NativeConvTranspose3d in kinds) is enabled
