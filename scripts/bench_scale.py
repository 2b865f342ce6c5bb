#!/usr/bin/env python
"""Library scale: one-time featurization and the cost of a model round on a whole library, per surrogate.

A round is what the design campaign's generator does each time it retrains: train the surrogate on the
molecules evaluated so far (one ``train_surrogate`` task, or one ``train_mpnn`` task per ensemble member), store
the model once by proxy, and score every block of the library (one ``score_block`` task per block). The same
worker functions run on real Parsl workers of the local site (``--ml-workers`` of them, one thread each, as in
a campaign). Featurization is the one-time cost a first campaign on a library pays; it is reported separately,
per million molecules.

Round 1 trains on ``--n-train`` molecules; each later round on ``--new-per-round`` more, appended at the end, as
a campaign's training set grows (``knn`` then only compares the library with the new molecules). The training
values are RDKit's Crippen logP of the training molecules: a round's cost does not depend on
which property is learned, and a library such as MOSES has no QC values to learn from.

    python scripts/bench_scale.py --library moses                 # 1.6M molecules, gc knn mpnn
    python scripts/bench_scale.py --library qm9 --models gc knn   # the same rounds on QM9

Prints one line per measurement, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.services.proxystore import close_proxy_store, open_proxy_store  # noqa: E402
from configs.sites.catalog import SiteOptions, local  # noqa: E402
from configs.sites.executors import ML_EXECUTOR  # noqa: E402
from methods.library import Library, featurize_block, missing_blocks, score_block  # noqa: E402
from methods.surrogates import MODELS, MPNNEnsemble, train_mpnn, train_surrogate  # noqa: E402
from thinkers.proxies import ProxyLedger  # noqa: E402


def load_library(name: str) -> tuple[Library, np.ndarray]:
    """The library's handle and SMILES, exactly as a campaign's assembly makes them."""
    if name == "qm9":
        from methods.data import CACHE_VERSION, load_qm9

        smiles = load_qm9().smiles
        return Library(f"qm9-v{CACHE_VERSION}", len(smiles)), smiles
    from configs.settings.search_space import load_search_space
    from methods.chem import SUPPORTED_ELEMENTS

    space = load_search_space(Path(name), elements=SUPPORTED_ELEMENTS)
    return Library(space.key, len(space.smiles)), np.array(space.smiles, dtype=object).astype(str)


def size(obj: object) -> int:
    """Bytes of a task's message as it travels (pickled; a proxy pickles to its small reference)."""
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", default="moses", help="qm9, moses, or a search-space file")
    parser.add_argument("--models", nargs="+", default=["gc", "knn", "mpnn"], choices=list(MODELS))
    parser.add_argument("--n-train", type=int, default=1000, help="molecules the surrogate is trained on")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per model (the first warms the caches)")
    parser.add_argument("--new-per-round", type=int, default=32,
                        help="molecules added to the training set each round, as QC results arrive")
    parser.add_argument("--ml-workers", type=int, default=2)
    parser.add_argument("--ensemble-size", type=int, default=4)
    parser.add_argument("--mpnn-epochs", type=int, default=64, help="epochs of the first round's members")
    parser.add_argument("--mpnn-warm-epochs", type=int, default=8,
                        help="epochs of later rounds' members, continuing from the previous round's (0: from scratch)")
    parser.add_argument("--mpnn-width", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import parsl
    from parsl import python_app
    from rdkit import Chem
    from rdkit.Chem import Crippen

    start = time.perf_counter()
    library, smiles = load_library(args.library)
    load_time = time.perf_counter() - start
    print(f"library {args.library}: {library.size} molecules, {library.n_blocks} blocks, loaded in {load_time:.1f} s",
          flush=True)
    rng = np.random.default_rng(0)
    n_max = args.n_train + args.new_per_round * (args.rounds - 1)
    train_rows = rng.choice(library.size, n_max, replace=False)
    train_smiles = smiles[train_rows].tolist()
    train_values = [Crippen.MolLogP(Chem.MolFromSmiles(s)) for s in train_smiles]

    run_dir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    config = local(run_dir, SiteOptions(qc_workers=1, ml_workers=args.ml_workers))
    apps = {f.__name__: python_app(f, executors=[ML_EXECUTOR]) for f in
            (missing_blocks, featurize_block, score_block, train_surrogate, train_mpnn)}
    results: dict = {"benchmark": "library_scale", "library": args.library, "molecules": library.size,
                     "blocks": library.n_blocks, "n_train": args.n_train, "new_per_round": args.new_per_round,
                     "ml_workers": args.ml_workers,
                     "load_time": load_time, "featurization": {}, "rounds": {},
                     "machine": f"{platform.node()} {platform.processor() or platform.machine()}"}
    largest = 0
    ledger = ProxyLedger(open_proxy_store(run_dir, "bench-scale"))
    parsl.load(config)
    try:
        apps["missing_blocks"](library, ["groups"]).result()  # workers started and warm before any timing
        for model_name in args.models:
            kind = MODELS[model_name].feature_kind
            begin = time.perf_counter()
            missing = apps["missing_blocks"](library, [kind]).result()[kind]
            futures = []
            for block in missing:
                rows = library.block_rows(block)
                block_smiles = smiles[rows.start:rows.stop].tolist()
                largest = max(largest, size((library, kind, block, block_smiles)))
                futures.append(apps["featurize_block"](library, kind, block, block_smiles))
            done = [f.result() for f in futures]
            wall = time.perf_counter() - begin
            computed = sum(d["molecules"] for d in done)
            if kind not in results["featurization"] or computed:
                results["featurization"][kind] = {
                    "blocks_computed": len(missing), "molecules": computed, "wall_time": wall,
                    "seconds_per_million": wall / computed * 1e6 if computed else None}
            print(f"featurize {kind}: {len(missing)} blocks ({computed} molecules) in {wall:.1f} s"
                  + (f" = {wall / computed * 1e6:.0f} s per million" if computed else " (all cached)"), flush=True)

            times = []
            previous: list = []
            for round_ in range(args.rounds):
                n = args.n_train + round_ * args.new_per_round  # the training set grows at its end
                round_smiles, round_values = train_smiles[:n], train_values[:n]
                begin = time.perf_counter()
                if model_name == "mpnn":  # as the campaign does: later rounds continue from the last members
                    warm = [ledger.put(m) for m in previous] if args.mpnn_warm_epochs else []
                    members = [apps["train_mpnn"](
                        round_smiles, round_values, seed=round_ * 100 + k, hidden=args.mpnn_width,
                        **({"initial": warm[k], "epochs": args.mpnn_warm_epochs} if warm else
                           {"epochs": args.mpnn_epochs})) for k in range(args.ensemble_size)]
                    previous = [m.result() for m in members]
                    for handle in warm:
                        ledger.retire(handle)
                    model = MPNNEnsemble(members=previous)
                else:
                    model, _ = apps["train_surrogate"](model_name, round_smiles, round_values, round_).result()
                trained = time.perf_counter()
                handle = ledger.put(model)
                largest = max(largest, size((handle, library, 0, None)))
                futures = [apps["score_block"](handle, library, b, None) for b in range(library.n_blocks)]
                scores = [f.result() for f in futures]
                largest = max(largest, max(size(s) for s in scores))
                ledger.retire(handle)
                end = time.perf_counter()
                mean = np.concatenate([m for m, _ in scores])
                assert len(mean) == library.size and np.isfinite(mean).mean() > 0.99, "scores incomplete"
                times.append({"n_train": n, "train": trained - begin, "score": end - trained, "total": end - begin,
                              "model_bytes": size(model)})
                print(f"{model_name} round {round_ + 1} ({n} training molecules): train {trained - begin:.1f} s, "
                      f"score {library.size} in {end - trained:.1f} s, total {end - begin:.1f} s "
                      f"(model {size(model) / 1e3:.0f} kB, sent by proxy)", flush=True)
            later = [t["total"] for t in times[1:]] or [times[0]["total"]]
            results["rounds"][model_name] = {"rounds": times, "first_total": times[0]["total"],
                                             "later_median": float(np.median(later))}
    finally:
        ledger.evict_all()
        close_proxy_store(ledger.store, run_dir)
        parsl.dfk().cleanup()
    results["largest_message_bytes"] = largest
    results["proxies"] = ledger.stats()
    print(f"largest message: {largest / 1e3:.1f} kB; proxies {ledger.stats()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
