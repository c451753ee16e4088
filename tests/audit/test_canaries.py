"""Canary design and scoring, checked by hand and on synthetic trajectories."""

from __future__ import annotations

import torch

from dpfedlora.audit.canaries import design_canaries, gradient_scores
from dpfedlora.audit.privacy import count_correct

SHAPES = [torch.Size([3, 4]), torch.Size([5])]  # p = 17


def _design(m, sigma, q=0.2):
    g = torch.Generator().manual_seed(0)
    return design_canaries(
        SHAPES, m, clip_norm=2.0, noise_multiplier=sigma, sampling_rate=q, generator=g
    )


def test_rotating_groups_are_orthonormal_and_take_turns():
    d = _design(40, 0.0)  # no noise: rotating, ceil(40 / 17) = 3 groups
    assert d.kind == "rotating" and d.groups == 3
    assert torch.allclose(d.directions.norm(dim=1), torch.full((40,), 2.0, dtype=torch.float64))
    for g in range(3):
        members = d.speaks(g)
        gram = d.directions[members] @ d.directions[members].T
        assert torch.allclose(
            gram, 4.0 * torch.eye(int(members.sum()), dtype=torch.float64), atol=1e-10
        )
    assert torch.equal(d.speaks(0), d.speaks(3)) and not torch.equal(d.speaks(0), d.speaks(1))
    assert int(sum(d.speaks(t) for t in range(3)).min()) == 1  # each canary speaks once a cycle


def test_heavy_noise_prefers_every_canary_at_every_step():
    d = _design(40, 5.0)  # σ² = 25 dominates the overlap: speaking every step wins
    assert d.kind == "all" and d.groups == 1


def test_contribution_is_the_sum_of_speaking_active_directions():
    d = _design(40, 0.0)
    active = torch.zeros(40, dtype=torch.bool)
    active[[0, 1, 3]] = True  # 0 and 3 are in group 0, 1 in group 1
    parts = d.contribution(0, active)
    assert [p.shape for p in parts] == SHAPES
    flat = torch.cat([p.flatten() for p in parts])
    assert torch.allclose(flat, d.directions[0] + d.directions[3])


def test_scores_separate_included_from_excluded_without_noise():
    d = _design(40, 0.0, q=0.5)
    g = torch.Generator().manual_seed(1)
    included = torch.arange(40) < 20
    lr_unit = 0.1  # the update is unit × (canary sum) when each canary adds C² to its projection
    real = [[torch.zeros(s, dtype=torch.float64) for s in SHAPES]]
    shadow = [[torch.zeros(s, dtype=torch.float64) for s in SHAPES]]
    drift = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    for t in range(12):
        active = included & (torch.rand(40, generator=g) < 0.5)
        contrib = d.contribution(t, active)
        # update = -(lr / B) · (data + canaries): the shadow has the same data drift
        scale = lr_unit / 4.0  # unit = lr · C² / B with C = 2
        real.append([r - scale * (dr + c) for r, dr, c in zip(real[-1], drift, contrib)])
        shadow.append([s - scale * dr for s, dr in zip(shadow[-1], drift)])
    scores = gradient_scores(real, shadow, d, unit=lr_unit, sampling_rate=0.5)
    # excluded canaries all get the "never drawn" score T/groups · log(1 - q); an included one
    # gets it too when it was never drawn while speaking, and otherwise scores strictly higher
    floor = 4 * torch.log(torch.tensor(0.5, dtype=torch.float64))
    assert torch.allclose(scores[~included], floor)
    above = scores[included] > floor + 1.0
    assert int(above.sum()) >= 10
    assert torch.allclose(scores[included][~above], floor)
    correct, n = count_correct(scores, included, guesses=10, side="in")
    assert (correct, n) == (10, 10)


def test_count_correct_by_hand():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.5, 0.7])
    included = torch.tensor([True, False, False, True, True, False])
    # in: the 3 highest are 0.9 (in), 0.8 (out), 0.7 (out) -> 1 right
    assert count_correct(scores, included, guesses=3, side="in") == (1, 3)
    # both, r = 4: "in" for 0.9, 0.8 (1 right); "out" for 0.1, 0.2 (0.1 right) -> 2 of 4
    assert count_correct(scores, included, guesses=4, side="both") == (2, 4)
