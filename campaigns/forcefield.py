"""How the forcefield campaign is put together: settings → worker methods, starting data and a thinker.

The wiring (``run.py``) calls :func:`check` before anything starts, :func:`task_methods` to start the workers
early, and :func:`assemble` once the run directory and the proxy store exist. The steering itself is
:class:`thinkers.forcefield.ForcefieldThinker`; it never sees a settings class, only its
:class:`~thinkers.forcefield_rules.ForcefieldPlan`.
"""

from __future__ import annotations

import logging
from typing import Any

from ase import Atoms
from colmena.queue.base import ColmenaQueues

from campaigns.contract import Assembly
from campaigns.startup import next_result
from configs.settings.models import SettingsError
from configs.sites.executors import ML_EXECUTOR, QC_EXECUTOR
from store.names import STARTING_STRUCTURES
from store.results import failure_reason
from store.rundir import RunDirectory
from store.summaries import forcefield_headline, summarize_forcefield
from thinkers.forcefield import ForcefieldThinker
from thinkers.forcefield_resume import ForcefieldHistory
from thinkers.forcefield_rules import ForcefieldPlan, QCJob
from thinkers.proxies import ProxyLedger
from thinkers.topics import FF_QC_TOPIC, FF_TOPICS

logger = logging.getLogger(__name__)


def relaxed_starts(queues: ColmenaQueues, run_dir: RunDirectory, starts: list[tuple[str, Atoms]], spec: Any,
                   task_config: dict[str, Any]) -> list[tuple[str, Atoms]]:
    """The starting structures, those embedded from a SMILES relaxed at the campaign's level of theory first.

    The relaxation runs once, on QC workers, before the thinker starts; its result is kept in the run directory
    (``starting_structures.extxyz``), so a resumed run starts from exactly the same structures.

    Raises:
        RuntimeError: a relaxation failed (the campaign cannot start from an unrelaxed embedding).
    """
    import ase.io

    from methods.data import atomic_save
    from methods.sampling import ORIGIN

    saved = run_dir.path / STARTING_STRUCTURES

    def read_saved() -> list[tuple[str, Atoms]]:
        return [(str(frame.info["name"]), Atoms(numbers=frame.numbers, positions=frame.positions, info=frame.info))
                for frame in ase.io.read(saved, index=":", format="extxyz")]

    if saved.exists():
        return read_saved()
    pending = {index: atoms for index, (_, atoms) in enumerate(starts) if atoms.info.get(ORIGIN) == "smiles"}
    for index, atoms in pending.items():
        logger.info("Relaxing %s (embedded by RDKit) with %s", starts[index][0], spec.code)
        queues.send_inputs(atoms, spec, task_config, method="relax_starting_structure", topic=FF_QC_TOPIC,
                           task_info={"start": index})
    relaxed = dict(enumerate(atoms for _, atoms in starts))
    for _ in pending:
        result = next_result(queues, FF_QC_TOPIC)
        index = result.task_info["start"]
        if not result.success:
            raise RuntimeError(f"relaxing {starts[index][0]} failed: {failure_reason(result)}")
        relaxed[index] = result.value
        logger.info("Relaxed %s in %s steps", starts[index][0], result.value.info.get("relaxed_steps"))
    frames = []
    for index, (name, _) in enumerate(starts):
        frame = relaxed[index].copy()
        frame.info.update({"name": name, ORIGIN: starts[index][1].info.get(ORIGIN)})
        frames.append(frame)
    atomic_save(saved, lambda temporary: ase.io.write(temporary, frames, format="extxyz"))
    return read_saved()  # as a resume will see them, to the last digit written


def plan_from_settings(settings: Any) -> ForcefieldPlan:
    """The thinker's plan from validated :class:`configs.settings.ForcefieldSettings`."""
    names = {f for f in ForcefieldPlan.__dataclass_fields__} - {"qc_slots"}
    return ForcefieldPlan(qc_slots=2 * settings.qc_workers, **{name: getattr(settings, name) for name in names})


def check(settings: Any) -> None:
    """Reject starting molecules that cannot be used, before anything starts or any run directory is made.

    Raises:
        SettingsError: one or more ``--molecules`` entries cannot be used (each named, with the reason).
    """
    from methods.sampling import starting_structures

    try:
        starting_structures(settings.molecules, seed=settings.seed)
    except ValueError as exc:
        raise SettingsError(f"--molecules: {exc}") from exc


def task_methods(settings: Any) -> tuple[tuple[str, ...], list[tuple[Any, str]]]:
    """The queue topics and worker methods, known before any data is loaded (``run.py`` starts workers first)."""
    from methods.mlip import evaluate, infer_energies, train_potential
    from methods.sampling import reference_trajectory, relax_starting_structure, run_sampling
    from methods.simulate import compute_energy_forces

    return FF_TOPICS, [(compute_energy_forces, QC_EXECUTOR), (reference_trajectory, QC_EXECUTOR),
                       (relax_starting_structure, QC_EXECUTOR),
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

    starts = starting_structures(settings.molecules, seed=settings.seed)  # check() has vetted them
    spec = QCSpec(code=settings.qc_code, method=settings.method, basis=settings.basis, seed=settings.seed,
                  timeout=settings.qc_timeout)
    run_dir.write_json("qc_spec.json", {**spec.model_dump(), "units": "eV, eV/Å", "task_config": task_config})
    config = PotentialConfig(max_atoms=max(len(atoms) for _, atoms in starts))
    history = ForcefieldHistory.load(run_dir, settings.ensemble_size) if run_dir.attempt > 0 else None
    ledger = ProxyLedger(proxy_store)

    def build_thinker(queues: ColmenaQueues) -> ForcefieldThinker:
        relaxed = relaxed_starts(queues, run_dir, starts, spec, task_config)
        initial = []
        for index, (name, atoms) in enumerate(relaxed):
            initial.append(QCJob(atoms.copy(), "initial", name))
            for copy in displaced(atoms, settings.initial_displacements, settings.displacement_scale,
                                  settings.seed + index):
                initial.append(QCJob(copy, "initial", name))
        for number, job in enumerate(initial):  # the same list on every attempt: a resume skips those already sent
            job.extra["initial_index"] = number
        return ForcefieldThinker(queues, plan_from_settings(settings), run_dir, relaxed, initial,
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
