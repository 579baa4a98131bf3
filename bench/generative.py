"""Generative-surrogate bench: constraint violation, projection throughput, conditional hit rate.

    python bench/generative.py                    # CPU; --device cuda on a GPU machine
    python bench/generative.py --out runs/generative_bench --targets 200 250 280

Figures printed (and written to OUT/generative_bench.json, OUT/generated.png, OUT/fields.png):
- constraint violation of 10^5 alloys from the conditional VAE (float32): largest |sum - 1| and
  largest excursion beyond an element bound; and of 10^3 microstructure fields: largest
  |mean - prescribed fraction|;
- projection throughput for a batch of 10^4 x 8 components (sort and bisection), beside a generic
  solver (SciPy's SLSQP, per row) in the same run;
- for each target hardness (band +-15 HV; the model also asked for processable alloys): the share
  of 1000 generated alloys that land in the band by the twin's ground truth (textbook route),
  against 1000 alloys drawn from the prior (uniform Sobol' over the same space), and the
  processable share of each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def throughput(fn, repeats: int = 5) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[200.0, 250.0, 280.0], help="hardness targets, HV")
    parser.add_argument("--band", type=float, default=15.0, help="half-width of the hit band, HV")
    parser.add_argument("--twin-samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--field-epochs", type=int, default=6, help="microstructure VAE training (64 x 64 fields)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/generative_bench"))
    args = parser.parse_args()

    from scipy.optimize import minimize

    from sdl.campaign import load_config
    from sdl.env.calphad import default_cache_path
    from sdl.env.twin import AlloyTwin
    from sdl.surrogates.generative import (
        plot_fields,
        plot_generated,
        train_composition_cvae,
        train_microstructure_vae,
        twin_composition_data,
        twin_labels,
        two_phase_fields,
    )
    from sdl.surrogates.projection import project_capped_simplex

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    space = load_config("configs/demo.yaml").space
    elements = list(space.composition.elements)
    low = [space.composition.elements[e][0] for e in elements]
    high = [space.composition.elements[e][1] for e in elements]
    twin = AlloyTwin(cache_path=default_cache_path())
    data = twin_composition_data(twin, space, args.twin_samples, seed=0)
    started = time.perf_counter()
    model = train_composition_cvae(data, low, high, epochs=args.epochs, seed=0, device=args.device)
    train_s = time.perf_counter() - started

    # 1. constraint violation on 10^5 generated alloys
    conditions = torch.tensor([[t, 1.0] for t in np.resize(args.targets, 100_000)], dtype=torch.float32,
                              device=args.device)
    x = model.sample(conditions, torch.Generator().manual_seed(0)).cpu()
    sum_error = float((x.double().sum(-1) - 1).abs().max())
    bound_excursion = float(torch.clamp(torch.tensor(low) - x, min=0).max().maximum(torch.clamp(x - torch.tensor(high), min=0).max()))

    # 2. projection throughput, 10^4 x 8
    rng = torch.Generator().manual_seed(1)
    y = torch.randn(10_000, 8, generator=rng).to(args.device)
    lo8 = torch.tensor([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], device=args.device)
    hi8 = torch.tensor([0.9, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1], device=args.device)
    rates = {m: 10_000 / throughput(lambda m=m: project_capped_simplex(y, lo8, hi8, 1.0, method=m))
             for m in ("sort", "bisect")}
    rows = y[:50].double().cpu().numpy()
    bounds = list(zip(lo8.cpu().numpy(), hi8.cpu().numpy()))
    started = time.perf_counter()
    for row in rows:
        minimize(lambda v, r=row: ((v - r) ** 2).sum(), np.full(8, 1 / 8), jac=lambda v, r=row: 2 * (v - r),
                 method="SLSQP", bounds=bounds, constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}])
    slsqp_rate = len(rows) / (time.perf_counter() - started)

    # 3. conditional hit rate against the prior, by the twin's truth
    prior = twin_composition_data(twin, space, 1000, seed=123)  # Sobol' alloys of the space, labelled by the twin
    prior_hv, prior_ok = prior.conditions[:, 0], prior.conditions[:, 1]
    hits = {}
    for target in args.targets:
        c = torch.tensor([[target, 1.0]], dtype=torch.float32, device=args.device).expand(1000, -1)
        gen = model.sample(c, torch.Generator().manual_seed(int(target))).double().cpu().numpy()
        hv, ok = twin_labels(twin, [dict(zip(elements, row.tolist())) for row in gen])
        hits[target] = {"generated": float(np.mean(np.abs(hv - target) <= args.band)),
                        "prior": float(np.mean(np.abs(prior_hv - target) <= args.band)),
                        "generated_processable": float(ok.mean()), "prior_processable": float(prior_ok.mean())}
        if target == args.targets[-1]:
            plot_generated(gen, hv, data, elements, {"hardness_hv": target, "feasible": 1}, args.out / "generated.png")

    # 4. microstructure fields with the CALPHAD fraction of an alloy at its ageing temperature
    fields, fractions = two_phase_fields(1024, seed=0)
    started = time.perf_counter()
    micro = train_microstructure_vae(fields, fractions, epochs=args.field_epochs, device=args.device)
    micro_s = time.perf_counter() - started
    alloy = {"Ni": 0.76, "Al": 0.12, "Co": 0.06, "Cr": 0.06}
    calphad_f = float(twin.equilibrium([alloy], 1050.0)["gamma_prime"][0])
    wanted = torch.rand(1000, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    sampled = torch.cat([micro.sample(chunk.to(args.device)).cpu() for chunk in wanted.split(100)])
    field_error = float((sampled.double().mean((1, 2)) - wanted.double()).abs().max())
    shown = micro.sample(torch.full((4,), calphad_f, device=args.device), torch.Generator().manual_seed(0)).cpu().numpy()
    plot_fields(shown, calphad_f, args.out / "fields.png",
                title=f"Ni-12Al-6Co-6Cr at 1050 K: CALPHAD gamma-prime fraction {calphad_f:.3f}, every field exactly")

    print(f"device {args.device}; composition CVAE trained on {len(data.fractions)} twin alloys in {train_s:.1f} s")
    print(f"constraint violation, 10^5 generated alloys (float32): max |sum - 1| = {sum_error:.1e}, "
          f"max bound excursion = {bound_excursion:.1e}")
    print(f"constraint violation, 10^3 microstructure fields (64 x 64): max |mean - fraction| = {field_error:.1e} "
          f"(field VAE trained {micro_s:.0f} s)")
    print("projection throughput, batch 10^4 x 8 (rows/s): " + ", ".join(f"{m} {r:,.0f}" for m, r in rates.items())
          + f"; SciPy SLSQP per row {slsqp_rate:,.0f} (x{rates['sort'] / slsqp_rate:,.0f} for sort)")
    print(f"alloys within +-{args.band:g} HV of the target, by the twin (textbook route):")
    for target, h in hits.items():
        print(f"  {target:5.0f} HV: generated {h['generated']:6.1%}   prior {h['prior']:6.1%}   "
              f"(processable: generated {h['generated_processable']:.1%}, prior {h['prior_processable']:.1%})")
    result = {"device": args.device, "sum_error": sum_error, "bound_excursion": bound_excursion,
              "field_fraction_error": field_error, "projection_rows_per_s": rates, "slsqp_rows_per_s": slsqp_rate,
              "hit_rates": hits, "train_s": train_s, "field_train_s": micro_s, "calphad_fraction": calphad_f}
    (args.out / "generative_bench.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}/generative_bench.json, generated.png, fields.png")


if __name__ == "__main__":
    main()
