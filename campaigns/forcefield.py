"""How the forcefield campaign is put together: settings → worker methods, starting data and a thinker.

The wiring (``run.py``) calls :func:`check` before anything starts, :func:`task_methods` to start the workers
early, and :func:`assemble` once the run directory and the proxy store exist. The steering itself is
:class:`thinkers.forcefield.ForcefieldThinker`; it never sees a settings class, only its
:class:`~thinkers.forcefield_rules.ForcefieldPlan`.
"""

from __future__ import annotations

from typing import Any

from colmena.queue.base import ColmenaQueues

from campaigns.contract import Assembly
from configs.settings.models import SettingsError
from configs.sites.executors import ML_EXECUTOR, QC_EXECUTOR
from store.rundir import RunDirectory
from store.summaries import forcefield_headline, summarize_forcefield
from thinkers.forcefield import ForcefieldThinker
from thinkers.forcefield_resume import ForcefieldHistory
from thinkers.forcefield_rules import ForcefieldPlan, QCJob
from thinkers.proxies import ProxyLedger
from thinkers.topics import FF_TOPICS


def plan_from_settings(settings: Any) -> ForcefieldPlan:
    """The thinker's plan from validated :class:`configs.settings.ForcefieldSettings`."""
    names = {f for f in ForcefieldPlan.__dataclass_fields__} - {"qc_slots"}
    return ForcefieldPlan(qc_slots=2 * settings.qc_workers, **{name: getattr(settings, name) for name in names})


def check(settings: Any) -> None:
    """Reject starting molecules that cannot be used, before anything starts or any run directory is made.

    Raises:
        SettingsError: a starting molecule is not in QM9.
    """
    from methods.sampling import starting_structures

    try:
        starting_structures(settings.molecules)
    except ValueError as exc:
        raise SettingsError(f"--molecules: {exc}") from exc


def task_methods(settings: Any) -> tuple[tuple[str, ...], list[tuple[Any, str]]]:
    """The queue topics and worker methods, known before any data is loaded (``run.py`` starts workers first)."""
    from methods.mlip import evaluate, infer_energies, train_potential
    from methods.sampling import reference_trajectory, run_sampling
    from methods.simulate import compute_energy_forces

    return FF_TOPICS, [(compute_energy_forces, QC_EXECUTOR), (reference_trajectory, QC_EXECUTOR),
                       (train_potential, ML_EXECUTOR), (run_sampling, ML_EXECUTOR), (infer_energies, ML_EXECUTOR),
                       (evaluate, ML_EXECUTOR)]


def assemble(settings: Any, run_dir: RunDirectory, task_config: dict[str, Any], proxy_store: Any) -> Assembly:
    """The forcefield campaign's one assembly point: settings → task-server methods and a thinker factory.

    ``run.py`` has run :func:`check` on the settings first and opened ``proxy_store`` (models and training data
    travel to workers through it; the campaign's ledger evicts what it put there when the run closes). A resumed
    run (``run_dir.attempt > 0``) takes its state over from ``train.db``, the records and the saved models
    (:class:`ForcefieldHistory`).
    """
    from methods.mlip import PotentialConfig, create_potential
    from methods.sampling import displaced, starting_structures
    from methods.simulate import QCSpec

    starts = starting_structures(settings.molecules)  # check() has vetted them
    spec = QCSpec(code=settings.qc_code, method=settings.method, basis=settings.basis, seed=settings.seed,
                  timeout=settings.qc_timeout)
    run_dir.write_json("qc_spec.json", {**spec.model_dump(), "units": "eV, eV/Å", "task_config": task_config})
    initial = []
    for index, (name, atoms) in enumerate(starts):
        initial.append(QCJob(atoms.copy(), "initial", name))
        for copy in displaced(atoms, settings.initial_displacements, settings.displacement_scale,
                              settings.seed + index):
            initial.append(QCJob(copy, "initial", name))
    for number, job in enumerate(initial):  # the same list on every attempt: a resume skips those already sent
        job.extra["initial_index"] = number
    config = PotentialConfig(max_atoms=max(len(atoms) for _, atoms in starts))
    history = ForcefieldHistory.load(run_dir, settings.ensemble_size) if run_dir.attempt > 0 else None
    ledger = ProxyLedger(proxy_store)

    def build_thinker(queues: ColmenaQueues) -> ForcefieldThinker:
        return ForcefieldThinker(queues, plan_from_settings(settings), run_dir, starts, initial,
                                 create_potential(config, seed=settings.seed), (spec, task_config), ledger, history)

    names = ", ".join(name for name, _ in starts)
    topics, methods = task_methods(settings)
    return Assembly(
        topics=topics,
        methods=methods,
        build_thinker=build_thinker,
        summarize=lambda wall_time: summarize_forcefield(run_dir, settings.qc_workers, settings.ml_workers,
                                                         wall_time, extra=ledger.stats()),
        headline=forcefield_headline,
        close=ledger.evict_all,
        description=f"forcefield for {names} with {settings.qc_code} ({settings.method}), {settings.qc_budget} QC "
                    f"calls, ensemble of {settings.ensemble_size}, {settings.qc_workers} QC and "
                    f"{settings.ml_workers} ML workers",
    )
