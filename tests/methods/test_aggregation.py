"""The pure aggregation helpers against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch

from dpfedlora.methods.aggregation import (
    delta_weight,
    exact_factors,
    lora_scaling,
    normalize_weights,
    truncated_split,
    weighted_mean,
)

T = torch.tensor


def test_weighted_mean_by_hand():
    # p = (1, 3) / 4: 0.25·[1, 2] + 0.75·[3, 6] = [2.5, 5.0]; 0.25·10 + 0.75·(-2) = 1.0
    got = weighted_mean(
        [{"x": T([1.0, 2.0]), "y": T(10.0)}, {"x": T([3.0, 6.0]), "y": T(-2.0)}], [1, 3]
    )
    assert torch.equal(got["x"], T([2.5, 5.0])) and torch.equal(got["y"], T(1.0))


def test_weighted_mean_refuses_mismatched_keys_and_bad_weights():
    with pytest.raises(ValueError, match="keys"):
        weighted_mean([{"x": T(1.0)}, {"z": T(1.0)}], [1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        normalize_weights([0.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        normalize_weights([2.0, -1.0])


def test_delta_weight_by_hand():
    b, a = T([[1.0], [2.0]]), T([[3.0, 4.0, 5.0]])
    want = T([[1.5, 2.0, 2.5], [3.0, 4.0, 5.0]])  # 0.5 · B A
    assert torch.equal(delta_weight(b, a, 0.5, fan_in_fan_out=False), want)
    assert torch.equal(delta_weight(b, a, 0.5, fan_in_fan_out=True), want.T)  # GPT-2 layout
    # Fed-SB: s · B R A with B = I, R = diag(2, 3), A = [[1, 0, 1], [0, 1, 0]]
    r = T([[2.0, 0.0], [0.0, 3.0]])
    a2 = T([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    got = delta_weight(torch.eye(2), a2, 1.0, fan_in_fan_out=False, r=r)
    assert torch.equal(got, T([[2.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))


def test_lora_scaling_by_hand():
    assert lora_scaling(8.0, 4, False) == 2.0 and lora_scaling(8.0, 4, True) == 4.0


def test_truncated_split_by_hand():
    # ΔW = diag(3, 2, 1): its best rank-2 approximation is diag(3, 2, 0); with s = 2 the split
    # puts the singular values in B: columns of norm 3/2 and 2/2, A's rows orthonormal
    delta = torch.diag(T([3.0, 2.0, 1.0]))
    b, a = truncated_split(delta, 2, 2.0, fan_in_fan_out=False)
    assert b.shape == (3, 2) and a.shape == (2, 3)
    torch.testing.assert_close(2.0 * b @ a, torch.diag(T([3.0, 2.0, 0.0])), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.norm(dim=0), T([1.5, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(a @ a.T, torch.eye(2), atol=1e-6, rtol=0)
    # a rank above the layer's is padded with zero directions; fan_in_fan_out transposes
    b5, a5 = truncated_split(delta.T.contiguous(), 5, 1.0, fan_in_fan_out=True)
    assert b5.shape == (3, 5) and torch.all(b5[:, 3:] == 0) and torch.all(a5[3:] == 0)
    torch.testing.assert_close(b5 @ a5, delta, atol=1e-6, rtol=0)


def test_exact_factors_find_the_numerical_rank():
    # [[3, 4, 5], [6, 8, 10]] = [1, 2]ᵀ [3, 4, 5] has rank 1
    delta = T([[3.0, 4.0, 5.0], [6.0, 8.0, 10.0]])
    b, a = exact_factors(delta, fan_in_fan_out=False)
    assert b.shape == (2, 1) and a.shape == (1, 3)
    torch.testing.assert_close(b @ a, delta, atol=1e-5, rtol=0)
    b, a = exact_factors(torch.diag(T([3.0, 2.0, 1.0])), fan_in_fan_out=False)
    assert b.shape == (3, 3)
