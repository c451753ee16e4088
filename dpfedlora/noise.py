"""Where DP randomness comes from: ``seeded`` (simulation) or ``secure`` (deployment).

Every private random draw — the Gaussian noise of each DP-SGD step, the Poisson batch
membership of each record, the noise of a private initialisation — comes from a
:class:`NoiseSource`, never from a global RNG. The Gaussian mechanism's release is
:meth:`NoiseSource.add_noise`: the clipped sum plus N(0, σ²) per coordinate, returned in the sum's
dtype, so each source decides at which precision the noise meets the data.

* ``seeded``: a ``torch.Generator`` derived from (seed, purpose, round, client). Runs are
  reproducible and resumable bit for bit, which is what a simulation needs, and exactly why it is
  not a deployment: anyone holding the config (it records the seed) can regenerate the noise and
  subtract it. Its noise is drawn in the sum's dtype and added there (Opacus's non-secure
  arithmetic); it makes no floating-point claim.
* ``secure``: a ChaCha20 keystream (the ``cryptography`` package) keyed from ``os.urandom`` for
  every source, so nothing in the config or the run directory predicts it. Gaussians are made in
  float64 by Box–Muller from 53-bit uniforms and each output is the sum of four draws divided by
  two (still N(0, σ²)), as Opacus's ``secure_mode`` (Holohan & Braghin 2021, arXiv:2107.10138
  §5.1). The sum is added in float64 and the result rounded once to the sum's dtype:
  ``(s.double() + z64).to(s.dtype)``.

What the float64 add and the sum of draws do and do not prove. Mironov (2012, "On significance
of the least significant bits for differential privacy", CCS) showed that a mechanism proven
private over the reals need not be private as implemented in floating point: the set of floats
that s + Z can produce depends on s, so the low bits of a single release can reveal its input.
Two measures here narrow that gap; neither closes it. (1) Adding in float64 and rounding once
makes the release round(s + Z) a post-processing of the float64 sum s + Z: between the noise
and the release there is only float64 arithmetic (the add, and in the fused optimizer the
division by the batch size; each rounds at 2⁻²⁹ of a float32 step) and one final cast.
Before, Z was first rounded to float32 and the sum rounded again in float32, so the noise's own
rounding reached the released bits and the float64 precision never did. (2) The sum of four
draws is Holohan & Braghin's mitigation of the known attack that inverts a Box–Muller output to
its uniforms (the search grows from about 2⁵³ to 2¹⁵⁹ candidates): a heuristic against that
attack, not a proof against every attack. The implemented noise is still
not N(0, σ²): it is a discrete distribution on float64 values with bounded support (|Z| ≤ 17.3σ,
from 53-bit uniforms), and no theorem here bounds the privacy loss of the implemented mechanism;
the ε the accountant reports is that of the ideal real-valued Gaussian mechanism. The proven
route is integer-valued noise from an exact sampler, the discrete Gaussian (Canonne, Kamath &
Steinke 2020, "The discrete Gaussian for differential privacy", NeurIPS), added to a clipped sum
quantised to a fixed grid; this module does not implement it.
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

    def add_noise(
        self, tensor: torch.Tensor, *, std: float, divide_by: float = 1.0
    ) -> torch.Tensor:
        """The Gaussian mechanism's release, (``tensor`` + N(0, std²) per coordinate) divided by
        ``divide_by``, in ``tensor``'s dtype and on its device. The precision at which the noise
        meets the data is the source's: see :class:`SeededNoise` and :class:`SecureNoise`."""

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

    def add_noise(
        self, tensor: torch.Tensor, *, std: float, divide_by: float = 1.0
    ) -> torch.Tensor:
        # Opacus's arithmetic in the tensor's dtype, so seeded runs keep their numbers bit for bit
        noisy = tensor + self.normal(tensor.shape, std=std, like=tensor)
        return noisy / divide_by if divide_by != 1.0 else noisy

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

    def _noise64(self, n: int, *, std: float) -> np.ndarray:
        """``n`` draws of N(0, std²) in float64: the sum of four standard normals times std / 2."""
        total = np.zeros(n, dtype=np.float64)
        for _ in range(self._DRAWS):
            total += self._standard_normal(n)
        return total * (std / math.sqrt(self._DRAWS))

    def normal(self, shape, *, std: float, like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        if std == 0 or n == 0:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        z = torch.from_numpy(self._noise64(n, std=std)).reshape(tuple(shape))
        return z.to(device=like.device, dtype=like.dtype)

    def add_noise(
        self, tensor: torch.Tensor, *, std: float, divide_by: float = 1.0
    ) -> torch.Tensor:
        """``(tensor.double() + z64) / divide_by`` rounded once to ``tensor``'s dtype: the noise
        meets the data at float64 (see the module docstring for what that does and does not
        prove), and no float32 rounding of the noise precedes the release."""
        # MPS has no float64: there the sum is formed on the host
        where = torch.device("cpu") if tensor.device.type == "mps" else tensor.device
        n = tensor.numel()
        z: torch.Tensor | float = 0.0
        if std != 0 and n > 0:
            z = torch.from_numpy(self._noise64(n, std=std)).reshape(tensor.shape).to(where)
        # a new tensor even without noise: the release never aliases the clipped sum
        noisy = tensor.to(device=where, dtype=torch.float64) + z
        if divide_by != 1.0:
            noisy = noisy / divide_by
        return noisy.to(tensor.dtype).to(tensor.device)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self._uniform53(n)) if n else torch.zeros(0, dtype=torch.float64)


# ``privacy.secure_mode`` -> source class
NOISE_SOURCES: dict[bool, type] = {False: SeededNoise, True: SecureNoise}


def noise_source_name(secure_mode: bool) -> str:
    return NOISE_SOURCES[bool(secure_mode)].name


def make_noise_source(secure_mode: bool, seed: int, *parts: object) -> NoiseSource:
    """The source for one purpose: seeded from (seed, *parts), or secure (ignores both)."""
    return NOISE_SOURCES[bool(secure_mode)](seed, *parts)
