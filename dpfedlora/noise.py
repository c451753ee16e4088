"""Where DP randomness comes from: ``seeded`` (simulation) or ``secure`` (deployment).

Every private random draw — the Gaussian noise of each DP-SGD step, the Poisson batch
membership of each record, the noise of a private initialisation — comes from a
:class:`NoiseSource`, never from a global RNG.

* ``seeded``: a ``torch.Generator`` derived from (seed, purpose, round, client). Runs are
  reproducible and resumable bit for bit, which is what a simulation needs, and exactly why it is
  not a deployment: anyone holding the config (it records the seed) can regenerate the noise and
  subtract it.
* ``secure``: a ChaCha20 keystream (the ``cryptography`` package) keyed from ``os.urandom`` for
  every source, so nothing in the config or the run directory predicts it. Gaussians are made in
  float64 by Box–Muller from 53-bit uniforms and each output is the sum of four draws divided by
  two (still N(0, σ²)): the mitigation of floating-point attacks on the Gaussian mechanism used by
  Opacus's ``secure_mode`` (Holohan & Braghin 2021, arXiv:2107.10138 §5.1; Mironov 2012 for the
  attack on naive floating-point noise). The result is cast to the parameter's dtype last.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

__all__ = [
    "NoiseSource",
    "SeededNoise",
    "SecureNoise",
    "NOISE_SOURCES",
    "make_noise_source",
    "derive_generator",
    "noise_source_name",
]


def derive_generator(seed: int, *parts: object) -> torch.Generator:
    """An independent generator for (seed, purpose, round, client...): resumable and seeded."""
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


class NoiseSource(Protocol):
    """Gaussian noise and uniform draws for one purpose (one client's round, say)."""

    name: str

    def normal(self, shape: torch.Size | tuple[int, ...], *, std: float, like: torch.Tensor):
        """N(0, std²) of ``shape`` with ``like``'s dtype and device."""

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` independent U[0, 1) draws (float64 on the CPU for secure, float32 seeded)."""


class SeededNoise:
    """Reproducible draws from a derived ``torch.Generator`` (simulation only)."""

    name = "seeded"

    def __init__(self, seed: int, *parts: object) -> None:
        self.generator = derive_generator(seed, *parts)

    def normal(self, shape, *, std: float, like: torch.Tensor) -> torch.Tensor:
        if std == 0:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        # the same call Opacus makes for non-secure noise, so seeded runs keep their numbers
        return torch.normal(
            mean=0, std=std, size=tuple(shape), device=like.device, generator=self.generator
        ).to(like.dtype)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)


class SecureNoise:
    """A CSPRNG (ChaCha20 keyed from OS entropy); see the module docstring."""

    name = "secure"
    _DRAWS = 4  # sum of 2n Gaussian draws / sqrt(2n) with n = 2, as Opacus's secure_mode

    def __init__(self, *_ignored: object) -> None:
        # The seed and purpose are deliberately ignored: nothing the config holds may key it.
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
        except ImportError:  # pragma: no cover - cryptography is a core dependency
            self._stream: Callable[[int], bytes] = os.urandom
        else:
            cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
            encryptor = cipher.encryptor()
            self._stream = lambda n: encryptor.update(bytes(n))

    def _uniform53(self, n: int) -> np.ndarray:
        """Uniforms in (0, 1): 53 random bits each, offset by half a step so log(u) is finite."""
        words = np.frombuffer(self._stream(8 * n), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def _standard_normal(self, n: int) -> np.ndarray:
        half = (n + 1) // 2
        u1, u2 = self._uniform53(half), self._uniform53(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * math.pi * u2
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def normal(self, shape, *, std: float, like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        if std == 0 or n == 0:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        total = np.zeros(n, dtype=np.float64)
        for _ in range(self._DRAWS):
            total += self._standard_normal(n)
        z = total * (std / math.sqrt(self._DRAWS))
        return torch.from_numpy(z).reshape(tuple(shape)).to(device=like.device, dtype=like.dtype)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self._uniform53(n)) if n else torch.zeros(0, dtype=torch.float64)


# ``privacy.secure_mode`` -> source class
NOISE_SOURCES: dict[bool, type] = {False: SeededNoise, True: SecureNoise}


def noise_source_name(secure_mode: bool) -> str:
    return NOISE_SOURCES[bool(secure_mode)].name


def make_noise_source(secure_mode: bool, seed: int, *parts: object) -> NoiseSource:
    """The source for one purpose: seeded from (seed, *parts), or secure (ignores both)."""
    return NOISE_SOURCES[bool(secure_mode)](seed, *parts)
