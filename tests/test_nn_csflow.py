"""Tests of the CS-Flow network and its loss and score helpers (tiny sizes, CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F

from skflow_ad.nn.csflow import (
    CrossConvolution,
    CrossConvolutionSubnet,
    CrossScaleCoupling,
    CrossScaleFlow,
    csflow_anomaly_map,
    csflow_anomaly_score,
    csflow_nll,
    soft_clamp,
    channel_major_flipped_weight,
    tap_major_weight,
    tap_sum,
    upsampled_convolution,
)

TINY = dict(hidden_channels=8, n_coupling_blocks=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions run fastest on one thread


def make_features(n_channels, sizes, n=2, dtype=torch.float32, seed=0):
    """One ``(n, C, s, s)`` map per entry of ``sizes`` (or ``(n, C, h, w)`` for pairs)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(s, s) if isinstance(s, int) else s for s in sizes]
    return [torch.randn(n, n_channels, h, w, generator=generator, dtype=dtype) for h, w in shapes]


def randomize_gains(flow, low=0.5, high=1.5, seed=1):
    """Give every zero-initialised output gain a random value of random sign, so the flow is not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in flow.coupling_blocks:
            for subnet in (block.first_half_subnet, block.second_half_subnet):
                gains = subnet.output_gains
                magnitude = torch.rand(gains.shape, generator=generator, dtype=gains.dtype)
                sign = torch.randint(0, 2, gains.shape, generator=generator).to(gains.dtype) * 2 - 1
                gains.copy_(sign * (low + (high - low) * magnitude))
    return flow


def composed_permutations(flow):
    """Per scale, the index ``p`` with ``flow(x)[i] == x[i][:, p]`` while the couplings are identities."""
    composed = []
    for scale in range(flow.n_scales):
        index = torch.arange(flow.n_channels[scale])
        for block in range(flow.n_coupling_blocks):
            index = index[flow.permutations[block][scale].permutation]
        composed.append(index)
    return composed


SIZES = [(8, 4, 2), (7, 4, 2), (9, 4, 2), (5, 3, 1), ((8, 6), (4, 3), (2, 2))]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("n_channels", [4, 5])
def test_output_shapes(sizes, n_channels):
    flow = randomize_gains(CrossScaleFlow(n_channels, **TINY))
    features = make_features(n_channels, sizes, n=3)
    latents, log_jac_det = flow(features)
    assert [z.shape for z in latents] == [x.shape for x in features]
    assert log_jac_det.shape == (3,)
    assert all(torch.isfinite(z).all() for z in latents)
    assert [x.shape for x in flow.inverse(latents)] == [x.shape for x in features]


def test_default_configuration_matches_paper():
    flow = CrossScaleFlow(4, hidden_channels=8)
    assert flow.n_coupling_blocks == 4
    assert flow.kernel_sizes == (3, 3, 3, 5)
    assert flow.clamp == 3.0
    last = flow.coupling_blocks[-1].second_half_subnet.input_convs[0]
    assert last.kernel_size == (5, 5) and last.padding == (2, 2)
    first = flow.coupling_blocks[0].first_half_subnet.output_layer.down_convs[0]
    assert first.kernel_size == (3, 3) and first.stride == (2, 2)
    assert CrossScaleFlow(4, n_coupling_blocks=2, hidden_channels=8).kernel_sizes == (3, 5)
    custom = CrossScaleFlow(4, n_coupling_blocks=2, hidden_channels=8, kernel_sizes=[5, 1])
    assert custom.kernel_sizes == (5, 1)


def original_parameter_count(n_channels, hidden, kernel_sizes, n_scales=3):
    """Parameters of the authors' CS-Flow (marco-rudolph/cs-flow, ``CrossConvolutions``), by hand.

    Each block has two subnets, each mapping ``c`` = ``n_channels // 2`` input
    channels per scale to ``2 c`` outputs (even ``n_channels``):

    - first layer, per scale only: ``n_scales`` convolutions ``c -> hidden``, with bias;
    - second layer: ``n_scales`` same-scale, ``n_scales - 1`` upsample-then-convolve
      and ``n_scales - 1`` stride-2 convolutions ``hidden -> 2c``, all with bias;
    - one output gain per scale.
    """
    c = n_channels // 2
    total = 0
    for k in kernel_sizes:
        first_layer = n_scales * (c * hidden * k * k + hidden)
        second_layer = (3 * n_scales - 2) * (hidden * 2 * c * k * k + 2 * c)
        total += 2 * (first_layer + second_layer + n_scales)
    return total


def test_parameter_count_at_paper_settings_is_the_original():
    # 304 channels (EfficientNet-B5 stage 6), 3 scales, 4 blocks, hidden 1024, kernels 3, 3, 3, 5;
    # built on the meta device, so no weights are allocated or drawn.
    with torch.device("meta"):
        flow = CrossScaleFlow(304, n_scales=3, n_coupling_blocks=4, hidden_channels=1024)
    n_parameters = sum(p.numel() for p in flow.parameters())
    assert flow.kernel_sizes == (3, 3, 3, 5)
    assert n_parameters == original_parameter_count(304, 1024, (3, 3, 3, 5)) == 275_227_288
    # the layout this replaced (cross-scale mixing in both layers) had 339,967,128
    small = CrossScaleFlow(6, hidden_channels=8, kernel_sizes=(3, 1, 3, 5))
    assert sum(p.numel() for p in small.parameters()) == original_parameter_count(6, 8, (3, 1, 3, 5))


def reference_subnet(subnet, maps):
    """The authors' subnet written out with ``F.conv2d`` on ``subnet``'s weights.

    Per scale ``h_i = leaky_relu(conv_i(x_i), 0.1)``; then
    ``out_i = gain_i * (same_i(h_i) + up_i(upsample(h_{i+1})) + resize(down_{i-1}(h_{i-1})))``.
    """
    def conv(module, x):
        return F.conv2d(x, module.weight, module.bias, stride=module.stride, padding=module.padding)

    hidden = [F.leaky_relu(conv(c, x), negative_slope=0.1) for c, x in zip(subnet.input_convs, maps)]
    layer = subnet.output_layer
    outputs = []
    for i, h in enumerate(hidden):
        out = conv(layer.same_scale_convs[i], h)
        if i + 1 < len(hidden):
            upsampled = F.interpolate(hidden[i + 1], size=h.shape[-2:], mode="bilinear", align_corners=False)
            out = out + conv(layer.up_convs[i], upsampled)
        if i > 0:
            down = conv(layer.down_convs[i - 1], hidden[i - 1])
            out = out + F.interpolate(down, size=h.shape[-2:], mode="bilinear", align_corners=False)
        outputs.append(subnet.output_gains[i] * out)
    return outputs


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("sizes", [(8, 4, 2), (7, 4, 2), ((8, 6), (4, 3), (2, 2))])
def test_subnet_is_the_authors_layout(sizes, grad):
    # inference computes the coarse-to-fine convolutions at the coarse scale: the same layer, up to rounding
    subnet = CrossConvolutionSubnet([3, 3, 3], [4, 4, 4], hidden_channels=6, kernel_size=3).double()
    with torch.no_grad():
        subnet.output_gains.copy_(torch.tensor([0.5, -1.0, 2.0]))
    maps = make_features(3, sizes, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        outputs = subnet(maps)
    for out, expected in zip(outputs, reference_subnet(subnet, maps)):
        torch.testing.assert_close(out, expected)
    # every convolution has a bias, as in the original
    convs = [m for m in subnet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 + 7 and all(c.bias is not None for c in convs)


@pytest.mark.parametrize("form", ["shifts", "fold"])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("coarse_size, fine_size", [((4, 4), (8, 8)), ((2, 3), (4, 6)), ((4, 2), (7, 4)), ((3, 3), (3, 3))])
def test_upsampled_convolution_mixes_channels_at_the_coarse_scale_with_the_same_result(
        kernel_size, coarse_size, fine_size, form):
    conv = torch.nn.Conv2d(5, 3, kernel_size, padding=kernel_size // 2).double()
    coarse = torch.randn(2, 5, *coarse_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    upsampled = F.interpolate(coarse, size=fine_size, mode="bilinear", align_corners=False)
    expected = F.conv2d(upsampled, conv.weight, conv.bias, padding=kernel_size // 2)
    with torch.no_grad(), tap_sum(form):
        fast = upsampled_convolution(conv, coarse, fine_size)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
    # resized channels-last inside, handed back in the layout of the direct form
    assert fast.is_contiguous()
    # with autograd on, the direct form (cheaper backward), with gradients
    out = upsampled_convolution(conv, coarse, fine_size)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.requires_grad


def test_tap_major_weight_stacks_one_out_by_in_matrix_per_tap():
    weight = torch.randn(3, 5, 3, 3)
    taps = tap_major_weight(weight)
    assert taps.shape == (27, 5, 1, 1)
    for dy in range(3):
        for dx in range(3):
            t = 3 * dy + dx
            assert torch.equal(taps[t * 3:(t + 1) * 3, :, 0, 0], weight[:, :, dy, dx])


def test_channel_major_flipped_weight_is_the_layout_fold_sums():
    weight = torch.randn(3, 5, 3, 3)
    rows = channel_major_flipped_weight(weight)
    assert rows.shape == (27, 5, 1, 1)
    for out in range(3):
        for t in range(9):
            dy, dx = divmod(8 - t, 3)
            assert torch.equal(rows[out * 9 + t, :, 0, 0], weight[out, :, dy, dx])


def test_tap_sum_checks_its_form_and_restores_the_previous_one(monkeypatch):
    conv = torch.nn.Conv2d(4, 2, 3, padding=1)
    coarse = torch.randn(1, 4, 3, 3)
    with pytest.raises(ValueError, match="form must be one of 'shifts', 'fold'; got 'slices'"):
        with tap_sum("slices"):
            pass
    folds = []
    fold = F.fold
    monkeypatch.setattr(F, "fold", lambda *args, **kwargs: folds.append(1) or fold(*args, **kwargs))

    def run():
        before = len(folds)
        out = upsampled_convolution(conv, coarse, (6, 6))
        return out, len(folds) - before

    with torch.no_grad():
        default, default_folds = run()
        with tap_sum("fold"):
            with tap_sum("shifts"):
                inner, inner_folds = run()
            folded, folded_folds = run()
        after, after_folds = run()
    assert (default_folds, inner_folds, folded_folds, after_folds) == (0, 0, 1, 0)
    torch.testing.assert_close(folded, default, rtol=1e-5, atol=1e-5)
    assert torch.equal(inner, default) and torch.equal(after, default)


@pytest.mark.parametrize("form", ["shifts", "fold"])
def test_upsampled_convolution_follows_weight_updates(form):
    # eager inference caches the weight in the form's layout; it must not outlive the values it was made from
    conv = torch.nn.Conv2d(4, 2, 3, padding=1)
    coarse = torch.randn(1, 4, 3, 3)

    def direct():
        x = coarse.to(conv.weight.dtype)
        return conv(F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False))

    def fast():
        with tap_sum(form):
            return upsampled_convolution(conv, coarse.to(conv.weight.dtype), (6, 6))

    with torch.no_grad():
        torch.testing.assert_close(fast(), direct())
        conv.weight.mul_(-2.0)  # in place, as an optimiser step or load_state_dict
        torch.testing.assert_close(fast(), direct())
        conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))  # a new tensor
        torch.testing.assert_close(fast(), direct())
        conv.double()
        torch.testing.assert_close(fast(), direct())
    with torch.inference_mode():  # autograd off through inference mode
        torch.testing.assert_close(fast(), direct())


def test_coarse_to_fine_path_upsamples_then_convolves():
    # With exact doubles the path is the original's conv(Upsample(scale_factor=2, bilinear)).
    layer = CrossConvolution([2, 2], [3, 3], kernel_size=3).double()
    fine, coarse = make_features(2, (8, 4), dtype=torch.float64)
    with torch.no_grad():
        layer.same_scale_convs[0].weight.zero_()
        layer.same_scale_convs[0].bias.zero_()
    up = layer.up_convs[0]
    upsampled = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.conv2d(upsampled, up.weight, up.bias, padding=1)
    torch.testing.assert_close(layer([fine, coarse])[0], expected)
    # convolution-then-upsample, the layout this replaced, gives something else
    convolved_first = F.interpolate(F.conv2d(coarse, up.weight, up.bias, padding=1), scale_factor=2,
                                    mode="bilinear", align_corners=False)
    assert not torch.allclose(expected, convolved_first)
    # fine to coarse: a stride-2 convolution
    assert layer.down_convs[0].stride == (2, 2) and layer.down_convs[0].padding == (1, 1)


def test_first_layer_does_not_mix_scales():
    # Scale 0's output sees scales 0 and 1 only; in the replaced layout it also saw scale 2.
    subnet = CrossConvolutionSubnet([3, 3, 3], [4, 4, 4], hidden_channels=6, kernel_size=3).double()
    with torch.no_grad():
        subnet.output_gains.fill_(1.0)
    maps = make_features(3, (8, 4, 2), dtype=torch.float64)
    base = subnet(maps)
    changed_coarsest = subnet([maps[0], maps[1], maps[2] + 1.0])
    changed_middle = subnet([maps[0], maps[1] + 1.0, maps[2]])
    assert torch.equal(changed_coarsest[0], base[0])
    assert not torch.allclose(changed_coarsest[1], base[1])
    assert not torch.allclose(changed_middle[0], base[0])
    assert all(conv.in_channels == 3 and conv.out_channels == 6 for conv in subnet.input_convs)


def test_fresh_flow_is_a_channel_permutation_with_zero_log_det():
    flow = CrossScaleFlow(6, **TINY)
    features = make_features(6, (7, 4, 2))
    latents, log_jac_det = flow(features)
    for x, z, index in zip(features, latents, composed_permutations(flow)):
        assert torch.equal(z, x[:, index])
    assert torch.equal(log_jac_det, torch.zeros(2))
    for block in flow.coupling_blocks:
        outputs, block_log_det = block(features)
        assert all(torch.equal(x, y) for x, y in zip(features, outputs))
        assert torch.equal(block_log_det, torch.zeros(2))


@pytest.mark.parametrize("sizes", [(8, 4, 2), (7, 4, 2), (9, 4, 2), (4, 2, 1)])
def test_inverse_reconstructs_features(sizes):
    flow = randomize_gains(CrossScaleFlow(5, **TINY)).double()
    features = make_features(5, sizes, dtype=torch.float64)
    latents, _ = flow(features)
    assert not any(torch.allclose(x, z) for x, z in zip(features, latents))
    for x, x_back in zip(features, flow.inverse(latents)):
        torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)


def test_block_inverse_log_det_is_negated():
    flow = randomize_gains(CrossScaleFlow(4, **TINY)).double()
    block = flow.coupling_blocks[0]
    features = make_features(4, (7, 4, 2), dtype=torch.float64)
    outputs, log_det = block(features)
    restored, inverse_log_det = block(outputs, rev=True)
    torch.testing.assert_close(inverse_log_det, -log_det)
    for x, x_back in zip(features, restored):
        torch.testing.assert_close(x_back, x)


@pytest.mark.parametrize("n_channels", [2, 3])
def test_log_det_matches_brute_force_jacobian(n_channels):
    flow = randomize_gains(CrossScaleFlow(n_channels, **TINY)).double()
    features = make_features(n_channels, (4, 2, 1), n=1, dtype=torch.float64)
    shapes = [x.shape for x in features]
    sizes = [x.numel() for x in features]

    def flat_forward(flat):
        maps = [part.reshape(shape) for part, shape in zip(flat.split(sizes), shapes)]
        return torch.cat([z.reshape(-1) for z in flow(maps)[0]])

    flat = torch.cat([x.reshape(-1) for x in features])
    jacobian = torch.autograd.functional.jacobian(flat_forward, flat)
    sign, expected = torch.linalg.slogdet(jacobian)
    _, log_jac_det = flow(features)
    assert sign != 0
    assert abs(expected.item()) > 0.1  # the check is not trivially 0 == 0
    torch.testing.assert_close(log_jac_det, expected.reshape(1), atol=1e-8, rtol=1e-8)


def test_soft_clamp():
    s = torch.tensor([-1e6, -30.0, -0.01, 0.0, 0.01, 30.0, 1e6], dtype=torch.float64)
    clamped = soft_clamp(s, 3.0)
    assert (clamped.abs() < 3.0).all()
    assert torch.all(clamped[1:] >= clamped[:-1])
    torch.testing.assert_close(clamped[2:5], (2 / math.pi) * s[2:5], atol=1e-6, rtol=0)
    torch.testing.assert_close(clamped, 3.0 * (2 / math.pi) * torch.atan(s / 3.0))


def test_clamp_bounds_log_scales_of_huge_subnet_outputs():
    clamp = 0.5
    flow = CrossScaleFlow(4, clamp=clamp, **TINY).double()
    randomize_gains(flow, low=1e4, high=2e4)
    features = make_features(4, (7, 4, 2), dtype=torch.float64)
    n_entries = sum(x[0].numel() for x in features)
    latents, log_jac_det = flow(features)
    # every entry gets one clamped log-scale per block
    assert (log_jac_det.abs() < clamp * n_entries * flow.n_coupling_blocks).all()
    block = flow.coupling_blocks[0]
    first = [x[:, :2] for x in features]
    log_scales, _ = block._log_scales_and_shifts(block.second_half_subnet, first, block.second_half_channels)
    assert max(s.abs().max() for s in log_scales) < clamp
    assert max(s.abs().max() for s in log_scales) > 0.9 * clamp
    assert all(torch.isfinite(z).all() for z in latents)


def test_permutations_differ_between_scales_and_are_reproducible():
    flow = CrossScaleFlow(16, **TINY, seed=3)
    for per_scale in flow.permutations:
        perms = [p.permutation for p in per_scale]
        for i in range(len(perms)):
            assert sorted(perms[i].tolist()) == list(range(16))
            for j in range(i):
                assert not torch.equal(perms[i], perms[j])
    torch.manual_seed(12345)  # the global generator must not matter
    same = CrossScaleFlow(16, **TINY, seed=3)
    other = CrossScaleFlow(16, **TINY, seed=4)
    for block, block_same, block_other in zip(flow.permutations, same.permutations, other.permutations):
        for p, q, r in zip(block, block_same, block_other):
            assert torch.equal(p.permutation, q.permutation)
            assert not torch.equal(p.permutation, r.permutation)
            assert torch.equal(p.permutation[p.inverse_permutation], torch.arange(16))


def test_weights_reproducible_from_seed():
    torch.manual_seed(0)
    a = CrossScaleFlow(4, **TINY, seed=7).state_dict()
    torch.manual_seed(1)
    b = CrossScaleFlow(4, **TINY, seed=7).state_dict()
    c = CrossScaleFlow(4, **TINY, seed=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_state_dict_round_trip_between_builds():
    source = randomize_gains(CrossScaleFlow(4, **TINY, seed=5))
    target = CrossScaleFlow(4, **TINY, seed=6)
    target.load_state_dict(source.state_dict())
    features = make_features(4, (7, 4, 2))
    for a, b in zip(source(features)[0], target(features)[0]):
        assert torch.equal(a, b)


def test_permutation_buffers_are_not_parameters():
    flow = CrossScaleFlow(4, **TINY)
    assert all(p.is_floating_point() for p in flow.parameters())
    flow.double()
    assert flow.permutations[0][0].permutation.dtype == torch.int64


def test_fresh_flow_trains_through_the_gains():
    flow = CrossScaleFlow(4, **TINY)
    features = make_features(4, (7, 4, 2))
    latents, log_jac_det = flow(features)
    csflow_nll(latents, log_jac_det).mean().backward()
    gains = [
        subnet.output_gains.grad
        for block in flow.coupling_blocks
        for subnet in (block.first_half_subnet, block.second_half_subnet)
    ]
    assert all(g is not None for g in gains)
    assert any(g.abs().sum() > 0 for g in gains)


def test_other_scale_counts_and_channel_lists():
    flow = randomize_gains(CrossScaleFlow([2, 3], n_scales=2, **TINY)).double()
    features = [torch.randn(2, 2, 5, 5, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)]
    latents, _ = flow(features)
    for x, x_back in zip(features, flow.inverse(latents)):
        torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)
    single = randomize_gains(CrossScaleFlow(3, n_scales=1, **TINY))
    latents, log_jac_det = single([torch.randn(2, 3, 4, 4)])
    assert latents[0].shape == (2, 3, 4, 4) and log_jac_det.shape == (2,)


def test_invalid_arguments_and_inputs():
    with pytest.raises(ValueError, match="at least 2 channels"):
        CrossScaleFlow(1, **TINY)
    with pytest.raises(ValueError, match="kernel_sizes"):
        CrossScaleFlow(4, kernel_sizes=(3, 3, 5), **TINY)
    with pytest.raises(ValueError, match="odd"):
        CrossScaleFlow(4, kernel_sizes=(3, 4), **TINY)
    with pytest.raises(ValueError, match="clamp"):
        CrossScaleFlow(4, clamp=0.0, **TINY)
    flow = CrossScaleFlow(4, **TINY)
    with pytest.raises(ValueError, match="3 feature maps"):
        flow(make_features(4, (8, 4)))
    with pytest.raises(ValueError, match="channels"):
        flow(make_features(5, (8, 4, 2)))
    with pytest.raises(ValueError, match="batch sizes"):
        flow([torch.randn(2, 4, 8, 8), torch.randn(3, 4, 4, 4), torch.randn(2, 4, 2, 2)])


def test_nll_by_hand():
    latents = [torch.full((2, 2, 2, 2), 2.0), torch.full((2, 2, 1, 1), -1.0)]
    log_jac_det = torch.tensor([3.0, -1.0])
    # D = 8 + 2 = 10, sum z^2 = 8 * 4 + 2 * 1 = 34 for each sample
    expected = torch.tensor([(17.0 - 3.0) / 10, (17.0 + 1.0) / 10])
    torch.testing.assert_close(csflow_nll(latents, log_jac_det), expected)


def test_nll_is_per_sample():
    latents = [torch.randn(4, 3, 4, 4), torch.randn(4, 3, 2, 2)]
    log_jac_det = torch.randn(4)
    whole = csflow_nll(latents, log_jac_det)
    for i in range(4):
        alone = csflow_nll([z[i : i + 1] for z in latents], log_jac_det[i : i + 1])
        torch.testing.assert_close(alone, whole[i : i + 1])


def test_anomaly_score_by_hand():
    latents = [torch.full((2, 2, 2, 2), 2.0), torch.full((2, 2, 1, 1), -1.0)]
    latents[0][1] = 0.0
    torch.testing.assert_close(csflow_anomaly_score(latents), torch.tensor([34 / 2 / 10, 2 / 2 / 10]))


def test_anomaly_map_modes_by_hand():
    fine = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[1.0, 0.0], [1.0, 2.0]]]])  # (1, 2, 2, 2)
    coarse = torch.full((1, 2, 1, 1), 3.0)
    fine_mean = torch.tensor([[[1.0, 2.0], [5.0, 2.0]]])  # channel mean of z^2
    torch.testing.assert_close(csflow_anomaly_map([fine, coarse], 2, mode="max"), fine_mean)
    torch.testing.assert_close(csflow_anomaly_map([fine, coarse], (2, 2), mode="all"), 9.0 * fine_mean)
    with pytest.raises(ValueError, match="mode"):
        csflow_anomaly_map([fine, coarse], 2, mode="mean")


@pytest.mark.parametrize("mode", ["all", "max"])
def test_anomaly_map_shapes(mode):
    latents = make_features(4, (7, 4, 2), n=3)
    anomaly_map = csflow_anomaly_map(latents, (30, 20), mode=mode)
    assert anomaly_map.shape == (3, 30, 20)
    assert (anomaly_map >= 0).all()
    assert csflow_anomaly_map(latents, 16, mode=mode).shape == (3, 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    flow = randomize_gains(CrossScaleFlow(4, **TINY)).cuda()
    features = [x.cuda() for x in make_features(4, (7, 4, 2))]
    latents, log_jac_det = flow(features)
    assert log_jac_det.device.type == "cuda" and all(z.device.type == "cuda" for z in latents)
    for x, x_back in zip(features, flow.inverse(latents)):
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)
    assert csflow_anomaly_map(latents, 28).device.type == "cuda"


def test_coupling_block_rejects_single_channel_scale():
    with pytest.raises(ValueError):
        CrossScaleCoupling([(4, 1, 1), (1, 1, 1)], hidden_channels=4)
