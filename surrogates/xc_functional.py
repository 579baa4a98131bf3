"""A learned exchange-correlation functional (a GGA) with exact constraints built into its form.

E_xc = E_x + E_c with

- exchange, per spin (the exact spin-scaling relation E_x[n_a, n_b] = (E_x[2 n_a] + E_x[2 n_b]) / 2):
  E_x[n] = int n eps_x^LDA(n) F_x(s), F_x = 1 + (1 - exp(-s^2)) g_x(s), g_x a small network squashed
  into (FX_MIN - 1, LIEB_OXFORD_FX - 1). Hence F_x(0) = 1 (the uniform gas), F_x depends on s alone
  (coordinate scaling E_x[n_l] = l E_x[n]), F_x <= 1.804 (the local Lieb-Oxford bound of exchange, as
  in PBE) and F_x >= FX_MIN > 0 (exchange never positive);
- correlation: E_c = int n eps_c^PW92(r_s, zeta) F_c(r_s, zeta, t), F_c = exp(-clip(t^2 h)), h a small
  network of (r_s, zeta^2, t^2), the clip soft on the enhancing side so F_c <= FC_MAX. Hence F_c(t=0)
  = 1 (the uniform gas, any spin polarisation), F_c > 0 and so eps_c F_c <= 0 (correlation never
  positive), F_c symmetric in zeta (spin flip);
- the local Lieb-Oxford bound on the whole, e_xc >= -1.679 n^(4/3): exchange alone keeps within it, and
  correlation is softly capped to the room exchange leaves (the cap acts only beyond 0.8 of the room,
  which the uniform gas never reaches for r_s <= 100, so the uniform-gas limit stays exact);
- both are integrals of a local energy density, so E_xc is size consistent.

What a GGA cannot hold by construction (the one-electron limit, the correlation scaling inequalities,
linearity of E(N)) is penalised in training and checked
(:mod:`sdl.surrogates.xc_training`); the -1/r decay of v_xc is out of reach of any GGA and is reported.

Why a GGA and not a meta-GGA: the kinetic-energy density would let the one-electron limit be exact,
but meta-GGA potentials are not multiplicative and notoriously grid-sensitive in SCF; the issue's
targets (SCF on every molecule, cost <= 3x PBE) favour the GGA, and the one-electron limit is met by
penalty instead (the H atom to < 1 mHa).

:func:`pbe_exchange_enhancement` and :func:`pbe_correlation_gradient_term` are PBE written out in the
same variables: the starting point the networks are fitted to before training (so training learns a
correction to PBE), and a check of this module against libxc. Energies in hartree, lengths in bohr.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

C_X = 0.75 * (3.0 / math.pi) ** (1.0 / 3.0)  # eps_x^LDA = -C_X n^(1/3)
KF_PER_N13 = (3.0 * math.pi**2) ** (1.0 / 3.0)  # k_F = KF_PER_N13 n^(1/3)
LIEB_OXFORD_FX = 1.804  # F_x bound that keeps exchange within the Lieb-Oxford bound (Perdew et al. 1996)
LIEB_OXFORD_XC = 1.679  # the bound itself: e_xc >= -1.679 n^(4/3)
FX_MIN = 0.7
FC_MAX = 2.0
CAP_ONSET = 0.8  # correlation's share of the Lieb-Oxford room above which the soft cap acts
DENSITY_FLOOR = 1e-14  # below this the energy density is taken as zero

# Perdew-Wang 1992 correlation of the uniform gas, with libxc's "PW_MOD" digits (what PBE uses):
# (A, alpha1, beta1, beta2, beta3, beta4) for eps_c(zeta=0), eps_c(zeta=1) and -alpha_c
PW92_PARAMETERS = ((0.0310907, 0.21370, 7.5957, 3.5876, 1.6382, 0.49294),
                   (0.01554535, 0.20548, 14.1189, 6.1977, 3.3662, 0.62517),
                   (0.0168869, 0.11125, 10.357, 3.6231, 0.88026, 0.49671))
PW92_FZ20 = 1.709920934161365617563962776245  # f''(0)
PBE_KAPPA, PBE_MU, PBE_BETA = 0.804, 0.2195149727645171, 0.06672455060314922
PBE_GAMMA = (1.0 - math.log(2.0)) / math.pi**2


def _pw92_g(rs: torch.Tensor, a, alpha1, b1, b2, b3, b4) -> torch.Tensor:
    sqrt_rs = torch.sqrt(rs)
    denominator = 2 * a * (b1 * sqrt_rs + b2 * rs + b3 * rs * sqrt_rs + b4 * rs**2)
    return -2 * a * (1 + alpha1 * rs) * torch.log1p(1 / denominator)


def pw92_correlation(rs: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """eps_c of the uniform electron gas per electron (Perdew and Wang, PRB 45, 13244 (1992))."""
    ec0, ec1, minus_ac = (_pw92_g(rs, *p) for p in PW92_PARAMETERS)
    fz = ((1 + zeta) ** (4 / 3) + (1 - zeta) ** (4 / 3) - 2) / (2 ** (4 / 3) - 2)
    z4 = zeta**4
    return ec0 - minus_ac * fz * (1 - z4) / PW92_FZ20 + (ec1 - ec0) * fz * z4


def pbe_exchange_enhancement(s2: torch.Tensor) -> torch.Tensor:
    return 1 + PBE_KAPPA - PBE_KAPPA / (1 + PBE_MU * s2 / PBE_KAPPA)


def pbe_correlation_gradient_term(eps_c: torch.Tensor, phi: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """PBE's H(r_s, zeta, t) (per electron)."""
    phi3 = phi**3
    a = PBE_BETA / PBE_GAMMA / torch.expm1(-eps_c / (PBE_GAMMA * phi3))
    at2 = a * t2
    return PBE_GAMMA * phi3 * torch.log1p(PBE_BETA / PBE_GAMMA * t2 * (1 + at2) / (1 + at2 + at2**2))


def _mlp(inputs: int, hidden: int, layers: int) -> nn.Sequential:
    sizes = [inputs] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        modules += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], 1))


class DensityVariables:
    """The local variables of a spin density (all tensors of one shape), and what does not depend on
    the networks (PW92, the LDA exchange prefactors): computed once when the density is fixed, as in
    training, and inside the autograd graph when the potential is wanted, as in SCF.

    ``share_equal_spins`` evaluates exchange once where both spin channels are equal (closed shells),
    for fixed densities only: it joins the two channels, so derivatives by each would be wrong."""

    def __init__(self, rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb, *, share_equal_spins: bool = False) -> None:
        n = rho_a + rho_b
        self.mask = n > DENSITY_FLOOR
        # where the density is negligible, compute on harmless values and zero the result afterwards
        # (the double-where keeps NaN out of the gradients)
        one = torch.ones_like(n)
        self.n = torch.where(self.mask, n, one)
        self.rho = [torch.where(self.mask, torch.clamp(r, min=0.0), one / 2) for r in (rho_a, rho_b)]
        self.sigma_spin = [torch.where(self.mask, torch.clamp(s, min=0.0), 0 * one) for s in (sigma_aa, sigma_bb)]
        sigma = torch.clamp(sigma_aa + 2 * sigma_ab + sigma_bb, min=0.0)
        self.sigma = torch.where(self.mask, sigma, 0 * one)
        self.rs = (3 / (4 * math.pi * self.n)) ** (1 / 3)
        self.zeta = torch.clamp((self.rho[0] - self.rho[1]) / self.n, -1 + 1e-12, 1 - 1e-12)
        self.phi = ((1 + self.zeta) ** (2 / 3) + (1 - self.zeta) ** (2 / 3)) / 2
        ks2 = 4 * KF_PER_N13 * self.n ** (1 / 3) / math.pi
        self.t2 = self.sigma / (4 * self.phi**2 * ks2 * self.n**2)
        self.eps_c_lda = pw92_correlation(self.rs, self.zeta)
        self.correlation_features = correlation_features(self.rs, self.zeta, self.t2)
        # exchange as terms (LDA prefactor, s^2, points they add to; None: all points)
        terms = []
        for k in (0, 1):
            n_k, s2_k = self.spin_channel(k)
            # an empty spin channel (fully polarised points) has no exchange at all, not the floor's
            prefactor = torch.where(2 * self.rho[k] > DENSITY_FLOOR, 0.5 * (-C_X * n_k ** (4 / 3)), 0.0)
            terms.append([prefactor, s2_k, None])
        if share_equal_spins:
            same = (rho_a == rho_b) & (sigma_aa == sigma_bb)
            terms[0][0] = torch.where(same, 2 * terms[0][0], terms[0][0])
            points = torch.nonzero(~same).squeeze(-1)
            terms[1] = [terms[1][0][points], terms[1][1][points], points]
        self.exchange_terms = terms

    def spin_channel(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, s^2) of the spin-scaled density 2 n_sigma (tiny channels get n = floor, s = 0)."""
        n = torch.clamp(2 * self.rho[k], min=DENSITY_FLOOR)
        s2 = 4 * self.sigma_spin[k] / (4 * KF_PER_N13**2 * n ** (8 / 3))
        return n, torch.clamp(s2, max=1e8)


def correlation_features(rs: torch.Tensor, zeta: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """The correlation network's inputs, each in [0, 1): sqrt(r_s) / (1 + sqrt(r_s)), zeta^2, t^2 / (1 + t^2)."""
    sqrt_rs = torch.sqrt(rs)
    return torch.stack([sqrt_rs / (1 + sqrt_rs), zeta**2, t2 / (1 + t2)], dim=-1)


class XcFunctional(nn.Module):
    """The learned GGA. ``energy_density`` gives e_x and e_c per volume at grid points."""

    def __init__(self, hidden: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.exchange_net = _mlp(1, hidden, layers)
        self.correlation_net = _mlp(3, hidden, layers)
        self.double()

    @staticmethod
    def _run(net: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
        # the networks may run in single precision while training (several times cheaper on 2M grid
        # points); everything around them stays in double
        return net(features.to(net[0].weight.dtype)).squeeze(-1).to(features.dtype)

    def exchange_enhancement(self, s2: torch.Tensor) -> torch.Tensor:
        u = (s2 / (1 + s2)).unsqueeze(-1)
        g = (FX_MIN - 1) + (LIEB_OXFORD_FX - FX_MIN) * torch.sigmoid(self._run(self.exchange_net, u))
        return 1 + (-torch.expm1(-s2)) * g

    def correlation_enhancement(self, rs: torch.Tensor, zeta: torch.Tensor, t2: torch.Tensor,
                                features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            features = correlation_features(rs, zeta, t2)
        y = t2 * self._run(self.correlation_net, features)
        limit = math.log(FC_MAX)
        exponent = torch.where(y >= 0, y, limit * torch.tanh(y / limit))  # soft floor at -ln FC_MAX
        return torch.exp(-exponent)

    def energy_density(self, rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_x, e_c): exchange and correlation energy per volume at each point."""
        return self.energy_of(DensityVariables(rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb))

    def energy_of(self, v: DensityVariables) -> tuple[torch.Tensor, torch.Tensor]:
        e_x = torch.zeros_like(v.n)
        for prefactor, s2, points in v.exchange_terms:
            term = prefactor * self.exchange_enhancement(s2)
            e_x = e_x + term if points is None else e_x.index_add(0, points, term)
        e_c = v.n * v.eps_c_lda * self.correlation_enhancement(v.rs, v.zeta, v.t2, v.correlation_features)
        # The local Lieb-Oxford bound on the whole of e_xc: exchange alone keeps within it (F_x <= 1.804
        # with spin scaling gives e_x >= -1.679 n^(4/3)); correlation may use the room left, |e_c| <=
        # e_x + 1.679 n^(4/3), through a soft cap that is the identity below CAP_ONSET of the room (so
        # the uniform gas, which uses < 0.75 of it for r_s <= 100, is untouched).
        room = torch.clamp(e_x + LIEB_OXFORD_XC * v.n ** (4 / 3), min=1e-300)
        used = -e_c / room
        soft = CAP_ONSET + (1 - CAP_ONSET) * torch.tanh((used - CAP_ONSET) / (1 - CAP_ONSET))
        e_c = -room * torch.where(used <= CAP_ONSET, used, soft)
        zero = torch.zeros_like(v.n)
        return torch.where(v.mask, e_x, zero), torch.where(v.mask, e_c, zero)

    def correlation_density(self, rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb) -> torch.Tensor:
        """e_c alone (what the correlation scaling inequalities concern)."""
        return self.correlation_of(DensityVariables(rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb))

    def correlation_of(self, v: DensityVariables) -> torch.Tensor:
        return self.energy_of(v)[1]  # the Lieb-Oxford cap ties correlation to exchange

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path, **metadata) -> None:
        torch.save({"kind": "sdl.xc_functional/2", "hidden": self.hidden, "layers": self.layers,
                    "state_dict": self.state_dict(), "metadata": metadata}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> XcFunctional:
        path = Path(path)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"{path}: no such functional checkpoint") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line refusal
            raise ValueError(f"{path} is not a functional checkpoint ({type(e).__name__})") from None
        if not isinstance(blob, dict) or blob.get("kind") != "sdl.xc_functional/2":
            raise ValueError(f"{path} is not an sdl XC functional checkpoint (written by `sdl xc train`)")
        model = cls(blob["hidden"], blob["layers"])
        model.load_state_dict(blob["state_dict"])
        model.metadata = blob.get("metadata", {})
        return model.eval()


def constraint_grid(rs_points: int = 60, zeta_points: int = 21, gradient_points: int = 60):
    """A dense (r_s, zeta, s) grid as spin densities (r_s 0.01-100 bohr, |zeta| <= 1, s 0-20; spin
    gradients parallel, in proportion to the spin densities): (rho_a, rho_b, sigma_aa, sigma_ab,
    sigma_bb, s). Where the constraints are checked, and the local Lieb-Oxford bound penalised."""
    rs = torch.logspace(-2, 2, rs_points, dtype=torch.float64)
    zeta = torch.linspace(-1, 1, zeta_points, dtype=torch.float64)
    s = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-3, math.log10(20), gradient_points - 1, dtype=torch.float64)])
    rs, zeta, s = (x.reshape(-1) for x in torch.meshgrid(rs, zeta, s, indexing="ij"))
    n = 3 / (4 * math.pi * rs**3)
    grad = s * 2 * KF_PER_N13 * n ** (4 / 3)  # |grad n| for this s
    ga, gb = grad * (1 + zeta) / 2, grad * (1 - zeta) / 2
    return n * (1 + zeta) / 2, n * (1 - zeta) / 2, ga**2, ga * gb, gb**2, s


def pbe_energy_density(rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb) -> tuple[torch.Tensor, torch.Tensor]:
    """PBE's (e_x, e_c) in the same variables: the reference the learned functional starts from."""
    v = DensityVariables(rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb)
    e_x = 0.0
    for k in (0, 1):
        n, s2 = v.spin_channel(k)
        e_x = e_x + 0.5 * (-C_X * n ** (4 / 3)) * pbe_exchange_enhancement(s2)
    eps_c = pw92_correlation(v.rs, v.zeta)
    e_c = v.n * (eps_c + pbe_correlation_gradient_term(eps_c, v.phi, v.t2))
    zero = torch.zeros_like(v.n)
    return torch.where(v.mask, e_x, zero), torch.where(v.mask, e_c, zero)


def pyscf_eval_xc(model: XcFunctional):
    """``model`` as PySCF's ``eval_xc`` for a GGA (``mf.define_xc_(f, xctype="GGA")``): the energy per
    electron and the potential (d e/d rho, d e/d sigma) by autograd, for closed and open shells."""

    def eval_xc(xc_code, rho, spin=0, relativity=0, deriv=1, omega=None, verbose=None):
        if deriv > 1:
            raise NotImplementedError("the learned functional provides energies and potentials (deriv <= 1); "
                                      "response properties (deriv 2) are not implemented")
        rho = np.asarray(rho, dtype=float)
        if spin == 0:
            n = torch.tensor(rho[0], requires_grad=True)
            sigma = torch.tensor(np.einsum("xn,xn->n", rho[1:4], rho[1:4]), requires_grad=True)
            e_x, e_c = model.energy_density(n / 2, n / 2, sigma / 4, sigma / 4, sigma / 4)
            inputs, total = (n, sigma), n
        else:
            a, b = rho[0], rho[1]
            inputs = tuple(torch.tensor(x, requires_grad=True) for x in
                           (a[0], b[0], np.einsum("xn,xn->n", a[1:4], a[1:4]),
                            np.einsum("xn,xn->n", a[1:4], b[1:4]), np.einsum("xn,xn->n", b[1:4], b[1:4])))
            e_x, e_c = model.energy_density(*inputs)
            total = inputs[0] + inputs[1]
        e = e_x + e_c
        grads = torch.autograd.grad(e.sum(), inputs)
        with torch.no_grad():
            exc = torch.where(total > DENSITY_FLOOR, e / torch.clamp(total, min=DENSITY_FLOOR), 0.0).numpy()
        g = [x.numpy() for x in grads]
        if spin == 0:
            return exc, (g[0], g[1], None, None), None, None
        return exc, (np.stack([g[0], g[1]], axis=1), np.stack([g[2], g[3], g[4]], axis=1), None, None), None, None

    return eval_xc
