"""How the design campaign is put together: settings → worker methods, the search space and a thinker.

The wiring (``run.py``) calls :func:`check` before anything starts, :func:`task_methods` to start the workers
early, and :func:`assemble` once the run directory and the proxy store exist. The steering itself is
:class:`thinkers.design.DesignThinker`; it sees a :class:`~thinkers.design.DesignPlan`, never a settings class.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from colmena.queue.base import ColmenaQueues

from campaigns.contract import Assembly
from campaigns.startup import next_result
from configs.settings.models import SettingsError
from configs.settings.search_space import load_search_space, skipped_summary
from configs.sites.executors import ML_EXECUTOR, QC_EXECUTOR
from methods.library import Library
from store.results import failure_reason
from store.rundir import RunDirectory
from store.summaries import design_headline, summarize_design
from thinkers.design import DesignHistory, DesignPlan, DesignThinker
from thinkers.proxies import ProxyLedger
from thinkers.topics import DESIGN_TOPICS, QC_TOPIC

logger = logging.getLogger(__name__)


def plan_from_settings(settings: Any, units: str) -> DesignPlan:
    """The thinker's plan: every field of the same name from validated :class:`CampaignSettings`."""
    names = {f.name for f in fields(DesignPlan)} - {"total_evaluations", "units"}
    return DesignPlan(total_evaluations=settings.total_evaluations, units=units,
                      **{name: getattr(settings, name) for name in names})


def request_atom_energies(queues: ColmenaQueues, spec: Any, task_config: dict[str, Any]) -> dict[str, float]:
    """Compute the isolated-atom reference energies once, on a QC worker, before the campaign starts.

    Raises:
        RuntimeError: the calculation failed; atomization energies cannot be computed without it.
    """
    queues.send_inputs(spec, task_config, method="compute_atom_energies", topic=QC_TOPIC)
    result = next_result(queues, QC_TOPIC)
    if not result.success:
        raise RuntimeError(f"reference atom energies failed: {failure_reason(result)}")
    return result.value


def check(settings: Any) -> None:
    """Reject settings that cannot run, before anything starts or any run directory is made.

    Raises:
        SettingsError: the pool is smaller than the QC budget.
    """
    if settings.pool_size is not None and settings.pool_size < settings.total_evaluations:
        raise SettingsError(f"--pool-size {settings.pool_size} is smaller than the QC budget "
                            f"({settings.total_evaluations} evaluations)")
    if settings.search_space is not None:
        space = search_space(settings.search_space)
        size = min(len(space.smiles), settings.pool_size or len(space.smiles))
        if size < settings.total_evaluations:
            raise SettingsError(f"--search-space {settings.search_space}: {size} valid molecules, fewer than the QC "
                                f"budget ({settings.total_evaluations} evaluations)")
        if settings.qc_code == "qm9":
            logger.warning("--qc-code qm9 with --search-space: molecules not in QM9 are recorded as failed lookups")


@functools.lru_cache(maxsize=1)
def search_space(path: Path) -> Any:
    """The validated molecules of a ``--search-space`` file, read once per process (by check, used by assemble).

    Raises:
        SettingsError: the file cannot be used (the message names the file, and the line where it matters).
    """
    from methods.chem import SUPPORTED_ELEMENTS

    return load_search_space(path, elements=frozenset(SUPPORTED_ELEMENTS))


def task_methods(settings: Any) -> tuple[tuple[str, ...], list[tuple[Any, str]]]:
    """The queue topics and worker methods, known before any data is loaded (``run.py`` starts workers first)."""
    from methods.library import featurize_block, missing_blocks
    from methods.rl import generate_molecules
    from methods.simulate import compute_atom_energies, evaluate_molecules
    from methods.surrogates import score_block, select_surrogate, train_mpnn, train_surrogate

    return DESIGN_TOPICS, [(evaluate_molecules, QC_EXECUTOR), (compute_atom_energies, QC_EXECUTOR),
                    (train_surrogate, ML_EXECUTOR), (select_surrogate, ML_EXECUTOR), (train_mpnn, ML_EXECUTOR),
                    (generate_molecules, ML_EXECUTOR),
                    (missing_blocks, ML_EXECUTOR), (featurize_block, ML_EXECUTOR), (score_block, ML_EXECUTOR)]


def assemble(settings: Any, run_dir: RunDirectory, task_config: dict[str, Any], proxy_store: Any) -> Assembly:
    """The design campaign's one assembly point: validated settings → task-server methods and a thinker factory.

    Loads the search space (QM9 or ``--search-space``), saves the level of theory (``qc_spec.json``), and, once
    the task server runs, computes the reference atom energies the atomization objective needs before the
    thinker starts. ``run.py`` has run :func:`check` on the settings first. A resumed run
    (``run_dir.attempt > 0``) takes its state over from the records (:class:`DesignHistory`) and reuses the
    saved atom energies.
    """
    from methods.data import CACHE_VERSION, load_qm9, sample_pool
    from methods.simulate import QCSpec

    spec = QCSpec(code=settings.qc_code, method=settings.method, basis=settings.basis,
                  objective=settings.objective, ie_type=settings.ie_type, seed=settings.seed,
                  timeout=settings.qc_timeout, ie_correction=settings.ie_correction)
    run_dir.write_json("qc_spec.json", {**spec.model_dump(), "units": spec.units, "task_config": task_config})
    if settings.search_space is not None:  # the user's library (validated by check) replaces QM9 as the pool
        space = search_space(settings.search_space)
        if space.skipped:
            logger.warning("--search-space %s: %s", settings.search_space, skipped_summary(space))
        pool_smiles = np.array(space.smiles, dtype=object).astype(str)
        library = Library(space.key, len(pool_smiles))
    else:
        pool_smiles = load_qm9().smiles
        library = Library(f"qm9-v{CACHE_VERSION}", len(pool_smiles))
    pool_rows = sample_pool(len(pool_smiles), settings.pool_size, settings.seed)
    history = DesignHistory.load(run_dir) if run_dir.attempt > 0 else None
    ledger = ProxyLedger(proxy_store)
    holder: dict[str, DesignThinker] = {}

    def build_thinker(queues: ColmenaQueues) -> DesignThinker:
        atom_energies = None
        if settings.objective == "atomization-energy" and settings.qc_code != "qm9":
            saved = run_dir.path / "atom_energies.json"
            if history is not None and saved.exists():
                atom_energies = run_dir.read_json("atom_energies.json")["energies"]
            else:
                atom_energies = request_atom_energies(queues, spec, task_config)
                run_dir.write_json("atom_energies.json", {"units": "Hartree", "energies": atom_energies})
            logger.info("Reference atom energies (Hartree): %s", atom_energies)
        plan = plan_from_settings(settings, units=spec.units)
        holder["thinker"] = DesignThinker(queues, plan, run_dir, library, pool_smiles, pool_rows,
                                          (spec, task_config, atom_energies), history, ledger)
        return holder["thinker"]

    def extra() -> dict[str, Any]:
        thinker = holder.get("thinker")
        return {**ledger.stats(), "largest_ml_message": thinker.largest_message if thinker else None,
                "library": {"key": library.key, "molecules": library.size}}

    topics, methods = task_methods(settings)
    return Assembly(
        topics=topics,
        methods=methods,
        build_thinker=build_thinker,
        summarize=lambda wall_time: summarize_design(run_dir, maximize=settings.maximize, n_workers=settings.qc_workers,
                                              wall_time=wall_time, extra=extra()),
        headline=functools.partial(design_headline, units=spec.units),
        close=ledger.evict_all,
        description=f"{settings.objective} with {settings.qc_code} ({settings.method}), "
                    f"{settings.total_evaluations} evaluations, {settings.qc_workers} QC workers",
    )
