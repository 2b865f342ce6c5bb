#!/usr/bin/env python
"""The interatomic potential on real GFN2-xTB labels: training time per member, hold-out error, MD step cost.

Builds ``--n-structures`` labelled structures (Gaussian displacements of small QM9-like molecules from
``ase.build.molecule``, or of random QM9 molecules with ``--source qm9``; energies and forces from GFN2-xTB
through QCEngine) plus ``--n-test`` held out. Then, on
one thread: a first round from scratch (one model), a warm-started round of ``--members`` bootstrap members, the
hold-out errors after each, the cost of one MD step with one model and with the ensemble, and the pickled size.
Structures are padded to ``--max-atoms`` (29 = the largest QM9 molecule, i.e. the cost a QM9 campaign pays).
Ends with one JSON line.

    python scripts/bench_mlip.py --n-structures 500 --members 4
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.constraints import FixCom  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import thermalize_momenta  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods import mlip  # noqa: E402

MOLECULES = ("CH4", "NH3", "H2O", "CH3OH", "C2H6", "HCOOH", "CH3CH2OH", "CH3CONH2", "HCF3", "C5H5N",
             "CH3COCH3", "trans-butane")
"""Closed-shell molecules of H, C, N, O, F with 3 to 14 atoms (ASE's G2 set)."""


def base_molecules(source: str, count: int, seed: int) -> list[Atoms]:
    """Equilibrium structures: ASE's G2 molecules above, or ``count`` random QM9 molecules (campaign-sized)."""
    if source == "g2":
        return [molecule(name) for name in MOLECULES]
    from methods.data import load_qm9

    qm9 = load_qm9()
    rows = np.random.default_rng(seed).choice(len(qm9), count, replace=False)
    return [Atoms(*qm9.geometry(int(row))) for row in rows]


def build_frames(bases: list[Atoms], n: int, seed: int, scratch: str) -> list[Atoms]:
    """``n`` randomly displaced ``bases`` (σ drawn in 0.05–0.10 Å per structure), labelled with GFN2-xTB."""
    from methods.chem import Structure
    from methods.simulate import BOHR_TO_ANGSTROM, HARTREE_TO_EV, QCFailure, QCSpec, run_qcengine

    spec = QCSpec(code="xtb", method="GFN2-xTB", objective="ionization-energy")
    task_config = {"ncores": 1, "memory": 2, "scratch_directory": scratch}
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []
    while len(frames) < n:
        atoms = bases[len(frames) % len(bases)].copy()
        atoms.positions += rng.normal(0.0, rng.uniform(0.05, 0.10), atoms.positions.shape)
        try:
            result = run_qcengine(Structure(tuple(atoms.get_chemical_symbols()), atoms.positions), charge=0,
                                  multiplicity=1, driver="gradient", spec=spec, task_config=task_config)
        except QCFailure as error:
            print(f"xTB failed on a displaced {atoms.get_chemical_formula()}: {error}", file=sys.stderr)
            continue
        energy = float(result.properties.return_energy) * HARTREE_TO_EV
        forces = -np.asarray(result.return_result).reshape(-1, 3) * HARTREE_TO_EV / BOHR_TO_ANGSTROM
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def load_or_build(path: str | None, bases: list[Atoms], n: int, seed: int) -> tuple[list[Atoms], float]:
    """Labelled frames, read from ``path`` when it exists (extended XYZ keeps the labels), else computed."""
    from ase.io import read, write

    if path and Path(path).exists():
        frames = read(path, index=":")
        if len(frames) >= n:
            return frames[:n], 0.0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        frames = build_frames(bases, n, seed, scratch)
    elapsed = time.perf_counter() - start
    if path:
        write(path, frames, format="extxyz")
    return frames, elapsed


def md_step_ms(potentials: list[mlip.Potential], atoms: Atoms, steps: int) -> tuple[float, float]:
    """Milliseconds per Langevin step (after a warm-up step), and the first call's seconds (trace and compile)."""
    atoms = atoms.copy()
    atoms.set_constraint(FixCom())  # as methods/sampling.py runs it
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(0))
    atoms.calc = mlip.EnsembleCalculator(potentials)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False,
                        rng=np.random.default_rng(0))
    start = time.perf_counter()
    atoms.get_forces()
    first = time.perf_counter() - start
    dynamics.run(1)
    start = time.perf_counter()
    dynamics.run(steps)
    return 1000 * (time.perf_counter() - start) / steps, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-structures", type=int, default=500, help="training structures")
    parser.add_argument("--n-test", type=int, default=100, help="held-out structures")
    parser.add_argument("--members", type=int, default=4, help="ensemble members of the warm-started round")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per round (default: train_potential's)")
    parser.add_argument("--first-epochs", type=int, default=None, help="epochs of the first round (default: --epochs)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train_potential's")
    parser.add_argument("--max-atoms", type=int, default=29, help="padding (29 = largest QM9 molecule)")
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--source", choices=("g2", "qm9"), default="g2",
                        help="displace ASE's G2 molecules (3-14 atoms) or random QM9 molecules (campaign-sized)")
    parser.add_argument("--molecules", type=int, default=12, help="QM9 molecules with --source qm9")
    parser.add_argument("--data", default=None, help="extended-XYZ cache of the labelled structures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other processes on the machine skew every timing below
    bases = base_molecules(args.source, args.molecules, args.seed)
    frames, label_time = load_or_build(args.data, bases, args.n_structures + args.n_test, args.seed)
    order = np.random.default_rng(args.seed).permutation(len(frames))
    train = [frames[i] for i in order[:args.n_structures]]
    test = [frames[i] for i in order[args.n_structures:]]
    config = mlip.PotentialConfig(max_atoms=max(args.max_atoms, max(len(a) for a in frames)))
    options = {key: value for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size))
               if value is not None}
    first_options = {**options, **({"epochs": args.first_epochs} if args.first_epochs else {})}
    print(f"{len(train)} training and {len(test)} held-out structures ({len(bases)} {args.source} molecules, "
          f"xTB labelling {label_time:.1f} s); padding to {config.max_atoms} atoms", flush=True)

    start = time.perf_counter()
    mlip.predict([mlip.create_potential(config)], test[:1])
    startup = time.perf_counter() - start  # TensorFlow import, thread set-up, inference trace

    first = mlip.train_potential(mlip.create_potential(config, seed=args.seed), train, seed=args.seed,
                                 bootstrap=False, **first_options)
    first_eval = mlip.evaluate([first], test)
    rows = [("round 1 (scratch)", first.stats, first_eval)]

    members = []
    for k in range(args.members):
        members.append(mlip.train_potential(first, train, seed=args.seed + 1 + k, **options))
        rows.append((f"round 2 member {k}", members[-1].stats, mlip.evaluate([members[-1]], test)))
    ensemble_eval = mlip.evaluate(members, test)
    energies, _ = mlip.predict(members, test)

    largest = max(test, key=len)
    md_single, md_single_first = md_step_ms([members[0]], largest, args.md_steps)
    md_ensemble, md_ensemble_first = md_step_ms(members, largest, args.md_steps)
    size = len(pickle.dumps(members[0]))

    print(f"\n{'':22s} {'train s':>8s} {'epochs':>7s} {'loss start→end':>18s} {'E MAE meV/at':>13s} "
          f"{'F MAE eV/Å':>11s} {'OOB F MAE':>10s}")
    for name, stats, report in rows:
        print(f"{name:22s} {stats['train_time']:8.1f} {stats['epochs']:7.1f} "
              f"{stats['initial_loss']:8.3f}→{stats['final_loss']:8.3f} {1000 * report['energy_mae']:13.1f} "
              f"{report['force_mae']:11.3f} {stats.get('oob_force_mae', float('nan')):10.3f}")
    print(f"{'round 2 ensemble mean':22s} {'':8s} {'':7s} {'':18s} {1000 * ensemble_eval['energy_mae']:13.1f} "
          f"{ensemble_eval['force_mae']:11.3f}")
    print(f"\nMD ({len(largest)} atoms, Langevin): {md_single:.2f} ms/step with one model, {md_ensemble:.2f} ms/step "
          f"with {args.members}; first call {md_single_first:.2f} s / {md_ensemble_first:.2f} s")
    print(f"Start-up (TensorFlow import + first trace) {startup:.1f} s; pickled potential {size / 1024:.0f} KiB "
          f"({members[0].n_parameters} parameters); traces {mlip.TRACE_COUNTS}; load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    member_times = [m.stats["train_time"] for m in members]
    result = {
        "source": args.source, "molecules": len(bases), "mean_atoms": float(np.mean([len(a) for a in frames])),
        "n_train": len(train), "n_test": len(test), "max_atoms": config.max_atoms, "label_s": label_time,
        "startup_s": startup, "platform": platform.processor() or platform.machine(),
        "first_round": {"train_s": first.stats["train_time"], "epochs": first.stats["epochs"],
                        "first_step_s": first.stats["first_step_time"], "energy_mae": first_eval["energy_mae"],
                        "force_mae": first_eval["force_mae"]},
        "warm_round": {"members": args.members, "train_s": member_times, "mean_train_s": float(np.mean(member_times)),
                       "epochs": members[0].stats["epochs"], "batch_size": members[0].stats["batch_size"],
                       "member_energy_mae": [r[2]["energy_mae"] for r in rows[1:]],
                       "member_force_mae": [r[2]["force_mae"] for r in rows[1:]],
                       "oob_force_mae": [m.stats.get("oob_force_mae") for m in members],
                       "ensemble_energy_mae": ensemble_eval["energy_mae"],
                       "ensemble_force_mae": ensemble_eval["force_mae"],
                       "mean_energy_std": float(energies.std(axis=0).mean())},
        "md_ms_per_step": {"single": md_single, "ensemble": md_ensemble, "atoms": len(largest)},
        "md_first_call_s": {"single": md_single_first, "ensemble": md_ensemble_first},
        "pickle_bytes": size, "n_parameters": members[0].n_parameters, "traces": dict(mlip.TRACE_COUNTS),
        "load_average": [load_before, os.getloadavg()[0]],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
