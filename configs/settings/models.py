"""Validated settings: the campaign options (one pydantic model, also the source of the CLI) and ``qcengine.yml``.

The command line of ``run.py`` is generated from :class:`CampaignSettings`, so every option has exactly one
definition, one default and one description, and the same validation runs whether a campaign is started
from the CLI, from a test or from a later resume.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from methods.objectives import parse_objective

SITE_OPTIONS = ("site", "task_server", "globus_qc_endpoint", "globus_ml_endpoint", "address", "worker_init",
                "ml_nodes", "qc_nodes", "qc_nodes_per_task", "mpi_flavor", "slurm_account", "slurm_partition",
                "slurm_qos", "walltime", "scheduler_options", "shared_nodes", "remote_host", "ssh_config",
                "remote_dir", "remote_init", "ml_worker_port")
"""Where the workers run: not part of a campaign, so a resumed run may use another site, job or allocation."""

DEFAULT_METHODS = {"xtb": ("GFN2-xTB", None), "nwchem": ("hf", "sto-3g"), "qm9": ("B3LYP/6-31G(2df,p)", None)}


def _default_qc_workers() -> int:
    """One QC worker per core: QC is the expensive part and runs single-threaded per task by default."""
    return max(1, os.cpu_count() or 1)


class CommonSettings(BaseModel):
    """Options every campaign shares: the level of theory, where workers run, the queues, the run directory.

    Each campaign's settings extend this class, so the QC code, the worker counts and the services are spelled
    and validated the same way whichever campaign is started.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    qc_code: Literal["xtb", "nwchem"] = Field("xtb", description="Quantum-chemistry code run through QCEngine")
    method: str | None = Field(
        None, description="QC method (default: GFN2-xTB for xtb, hf for nwchem)", min_length=1
    )
    basis: str | None = Field(
        None, description="Basis set for NWChem (default: sto-3g); ignored by xtb", min_length=1
    )
    qc_workers: Annotated[int, Field(gt=0)] = Field(
        default_factory=_default_qc_workers, description="Parsl workers in the qc partition"
    )
    ml_workers: Annotated[int, Field(gt=0)] = Field(1, description="Parsl workers in the ml partition")
    seed: int = Field(0, description="Random seed for the initial data, sampling and models")
    redis_host: str = Field(
        "127.0.0.1", description="Redis server for the Colmena queues (a local one is started if none answers)"
    )
    redis_port: Annotated[int, Field(gt=0, lt=65536)] = Field(6379, description="Redis port")
    redis_password: str | None = Field(
        None, description="Password of an existing Redis server (a started one gets a random password)"
    )
    site: Literal["local", "pbs", "slurm", "multisite"] = Field(
        "local", description="Where workers run (configs/sites/catalog.py): this machine (local); inside a PBS, "
        "Cobalt or Slurm batch job, workers placed on its nodes by mpiexec (pbs); blocks requested from Slurm "
        "(slurm); QC here and ml workers on --remote-host through SSH tunnels (multisite)"
    )
    task_server: Literal["parsl", "globus"] = Field(
        "parsl", description="Task server: Parsl executors from --site (parsl), or Globus Compute endpoints "
        "given by --globus-qc-endpoint and --globus-ml-endpoint (globus)"
    )
    globus_qc_endpoint: str | None = Field(None, description="Globus Compute endpoint id for QC tasks")
    globus_ml_endpoint: str | None = Field(None, description="Globus Compute endpoint id for ml tasks")
    address: str | None = Field(
        None, description="Address the Parsl interchanges bind and workers connect to (default: 127.0.0.1 for "
        "local and multisite; for pbs and slurm the address this host's name resolves to, found without "
        "contacting the network)", min_length=1
    )
    worker_init: str = Field(
        "", description="Shell commands run before workers start on cluster nodes, e.g. 'module load …' (this "
        "environment's bin directory is always put first on PATH)"
    )
    ml_nodes: Annotated[int, Field(gt=0)] = Field(
        1, description="pbs: nodes of the batch job that serve ml (the rest serve QC); slurm: nodes of the ml block"
    )
    qc_nodes: Annotated[int, Field(gt=0)] = Field(1, description="slurm: nodes of the QC block")
    qc_nodes_per_task: Annotated[int, Field(gt=0)] = Field(
        1, description="pbs: nodes of one QC task (NWChem over MPI; above 1, Parsl's MPI executor hands each task "
        "its nodes)"
    )
    mpi_flavor: Literal["openmpi", "mpich"] = Field(
        "openmpi", description="pbs: the MPI that starts workers and multi-node QC: Open MPI, or MPICH-style "
        "launchers (MPICH, Cray PALS on Polaris and Aurora)"
    )
    slurm_account: str | None = Field(None, description="slurm: account charged for the blocks")
    slurm_partition: str | None = Field(None, description="slurm: partition (queue) of the blocks")
    slurm_qos: str | None = Field(None, description="slurm: quality of service of the blocks")
    walltime: str = Field(
        "01:00:00", pattern=r"^\d{1,3}:\d{2}:\d{2}$", description="slurm: wall time of each block, HH:MM:SS"
    )
    scheduler_options: str = Field(
        "", description="slurm: extra '#SBATCH …' lines for the blocks (constraints, GPUs), separated by ';'"
    )
    shared_nodes: bool = Field(
        False, description="slurm: let blocks share nodes with other jobs (no --exclusive)"
    )
    remote_host: str | None = Field(
        None, description="multisite: SSH destination of the ml site's login node (a host or ~/.ssh/config alias)",
        min_length=1,
    )
    ssh_config: Path | None = Field(None, description="multisite: ssh client configuration file (ssh -F)")
    remote_dir: str = Field(
        "molsteer-workers", min_length=1,
        description="multisite: directory on the remote site for worker logs and keys (relative to its home)"
    )
    remote_init: str = Field(
        "", description="multisite: shell commands that prepare the remote environment, e.g. "
        "'cd ~/molsteer && source .venv/bin/activate'"
    )
    ml_worker_port: Annotated[int, Field(gt=1023, lt=65536)] = Field(
        54931, description="multisite: port of the ml interchange, forwarded to the remote site by the SSH tunnel"
    )
    qc_config: Path = Field(
        Path("qcengine.yml"), description="File with the machine-dependent QC settings (cores, memory, scratch)"
    )
    runs_dir: Path = Field(Path("runs"), description="Directory that receives one sub-directory per run")
    qc_timeout: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Wall-time limit in seconds for each molecule's (each structure's) QC; beyond it the "
        "calculation is stopped and recorded as failed (default: no limit)"
    )
    max_retries: Annotated[int, Field(ge=0, le=10)] = Field(
        2, description="Times a task is run again when its worker dies under it (a QC failure is not retried)"
    )

    resume_budget: ClassVar[str] = ""
    """The one option ``--resume`` accepts (a larger budget); every other option keeps its saved value."""

    @model_validator(mode="after")
    def _check_site(self) -> CommonSettings:
        """Options that only make sense together: a remote host for multisite, endpoints for Globus, and so on."""
        if self.site == "multisite" and not self.remote_host:
            raise ValueError("--site multisite needs --remote-host (the ml site's login node)")
        if self.task_server == "globus":
            missing = [f"--globus-{label}-endpoint" for label in ("qc", "ml")
                       if getattr(self, f"globus_{label}_endpoint") is None]
            if missing:
                raise ValueError(f"--task-server globus needs {' and '.join(missing)}")
            for label in ("qc", "ml"):
                try:
                    uuid.UUID(getattr(self, f"globus_{label}_endpoint").strip())
                except ValueError:
                    raise ValueError(f"--globus-{label}-endpoint is not a Globus Compute endpoint id (a UUID, "
                                     "see globus-compute-endpoint list)") from None
        if self.qc_nodes_per_task > 1:
            if self.site != "pbs":
                raise ValueError("--qc-nodes-per-task above 1 needs --site pbs (a batch job's nodes)")
            if self.qc_code != "nwchem":
                raise ValueError("--qc-nodes-per-task above 1 needs --qc-code nwchem (the MPI code)")
        return self

    def _fill_level_of_theory(self) -> None:
        """Pick the code's default level of theory, so the saved parameters say what ran, and reject mismatches."""
        method, basis = DEFAULT_METHODS[self.qc_code]
        if self.method is None:
            self.method = method
        if self.qc_code == "nwchem" and self.basis is None:
            self.basis = basis
        if self.qc_code == "qm9" and self.method != DEFAULT_METHODS["qm9"][0]:
            raise ValueError("--qc-code qm9 looks up QM9's B3LYP values: it takes no --method")
        if self.qc_code in ("xtb", "qm9") and self.basis is not None:
            raise ValueError(f"--basis is only used by --qc-code nwchem (not {self.qc_code})")
        if self.qc_code == "xtb" and self.method.lower() not in ("gfn2-xtb", "gfn1-xtb", "gfn0-xtb"):
            raise ValueError(f"--method {self.method!r} is not an xTB method (use GFN2-xTB, GFN1-xTB or GFN0-xTB)")


class CampaignSettings(CommonSettings):
    """Everything that defines a molecular-design campaign (``python run.py design``); saved as ``run_params.json``."""

    resume_budget: ClassVar[str] = "search_size"

    objective: str = Field(
        "ionization-energy",
        description="Property to optimize: ionization-energy (largest), atomization-energy (smallest), or, "
        "with --qc-code qm9, qm9:<column> for any numeric QM9 column (with --maximize or --minimize)",
    )
    maximize: bool | None = Field(
        None, description="Search for the largest (--maximize) or smallest (--minimize) value "
        "(default: largest ionization energy, smallest atomization energy)"
    )
    qc_code: Literal["xtb", "nwchem", "qm9"] = Field(
        "xtb", description="Quantum-chemistry code run through QCEngine (xtb, nwchem), or qm9 to look up "
        "QM9's own B3LYP values instead of computing (benchmarks the steering at full speed)"
    )
    ie_type: Literal["adiabatic", "vertical"] = Field(
        "adiabatic",
        description="Ionization energy with a relaxed cation (adiabatic) or at the neutral geometry (vertical)",
    )
    ie_correction: Literal["none", "shift", "ipea-xtb"] = Field(
        "none",
        description="Calibrate xTB ionization energies to experiment: none (raw GFN2 ΔSCF, ~4.7 eV too high), "
        "shift (minus the xTB authors' empirical 4.85 eV IP shift), or ipea-xtb (IPEA-xTB single points at the "
        "relaxed geometries minus the same shift; needs param_ipea-xtb.txt on $XTBPATH); xtb only",
    )
    generator: Literal["pool", "rl"] = Field(
        "pool",
        description="Where candidates come from: screening the QM9 pool (pool) or a reinforcement-learning "
        "agent that edits molecules to maximize the surrogate's prediction (rl)",
    )
    max_heavy_atoms: Annotated[int, Field(ge=2, le=30)] = Field(
        9, description="Largest molecule (heavy atoms) the RL generator may build"
    )
    model: Literal["gc", "knn", "mpnn", "auto"] = Field(
        "auto",
        description="Surrogate: group contributions with Bayesian ridge (gc), k-nearest neighbours "
        "on Morgan fingerprints (knn), an ensemble of message-passing neural networks (mpnn), or each round "
        "whichever of gc and knn has the lower cross-validated error on the results so far (auto)",
    )
    ensemble_size: Annotated[int, Field(ge=2)] = Field(
        4, description="MPNN ensemble members, each trained on a bootstrap resample as its own ml task"
    )
    mpnn_epochs: Annotated[int, Field(gt=0)] = Field(
        64, description="Training epochs of each MPNN member trained from random weights (the first round)"
    )
    mpnn_warm_epochs: Annotated[int, Field(ge=0)] = Field(
        8, description="Epochs of each MPNN member in later rounds, continuing from its previous weights on "
        "all results so far (0: every round trains from random weights for --mpnn-epochs)",
    )
    mpnn_width: Annotated[int, Field(ge=8, le=512)] = Field(
        32, description="Width of the MPNN's atom states (chosen by scripts/cv_mpnn.py; see README)"
    )
    acquisition: Literal["greedy", "ucb", "ei"] = Field(
        "greedy",
        description="How predictions become a ranking: the mean (greedy), mean + beta*std (ucb), or expected "
        "improvement over the best found (ei)",
    )
    beta: Annotated[float, Field(ge=0)] = Field(1.0, description="Weight of the uncertainty in --acquisition ucb")
    search_size: Annotated[int, Field(gt=0)] = Field(
        480, description="QC evaluations chosen by the model after the initial ones; the campaign then stops"
    )
    initial_count: Annotated[int, Field(gt=0)] = Field(
        32, description="Random QM9 molecules evaluated first, to train the first model"
    )
    parallel_guesses: Annotated[int, Field(gt=0)] | None = Field(
        None, description="QC tasks kept in flight at all times (default: twice --qc-workers, so every worker "
        "has its next task waiting)"
    )
    qc_batch: Annotated[int, Field(gt=0)] = Field(
        1, description="Molecules packed into one QC task (raise it when single QC tasks are very short)"
    )
    generate_size: Annotated[int, Field(gt=0)] = Field(
        32, description="Best-ranked molecules pushed into the task queue after each model round"
    )
    retrain_after: Annotated[int, Field(gt=0)] = Field(
        8, description="New QC results needed before the model is retrained and the pool re-scored"
    )
    search_space: Path | None = Field(
        None, description="File of molecules to search instead of QM9: one SMILES per line with an optional name "
        "(.smi), or a .csv with a smiles column; .gz accepted; invalid lines are reported and skipped. 'moses' "
        "names the MOSES training set (1.6 million drug-like molecules, installed with molsteer)"
    )
    pool_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="QM9 molecules sampled (by --seed) as the search space (default: all of QM9)"
    )
    rl_episodes: Annotated[int, Field(ge=0)] = Field(
        10, description="Episodes per round of the reinforcement-learning generator (used by --generator rl)"
    )

    @model_validator(mode="after")
    def _fill_method_defaults(self) -> CampaignSettings:
        """Pick the code's default level of theory and direction, so the saved parameters say what ran."""
        objective = parse_objective(self.objective)  # raises ValueError with the reason
        if self.parallel_guesses is None:
            self.parallel_guesses = 2 * self.qc_workers
        if objective.column is not None and self.qc_code != "qm9":
            raise ValueError(f"--objective {self.objective} is a QM9 column: it needs --qc-code qm9")
        if self.maximize is None:
            if objective.maximize is None:
                raise ValueError(f"--objective {self.objective}: say --maximize or --minimize")
            self.maximize = objective.maximize
        self._fill_level_of_theory()
        return self

    @model_validator(mode="after")
    def _check_ie_correction(self) -> CampaignSettings:
        """A calibration of xTB ionization energies means nothing for another code or objective: refuse it."""
        if self.ie_correction != "none" and (self.qc_code != "xtb" or self.objective != "ionization-energy"):
            raise ValueError(f"--ie-correction {self.ie_correction} calibrates xTB ionization energies: it needs "
                             f"--qc-code xtb and --objective ionization-energy (not --qc-code {self.qc_code} "
                             f"--objective {self.objective})")
        return self

    @property
    def total_evaluations(self) -> int:
        """QC evaluations in the whole campaign: the initial random ones plus the model-guided ones."""
        return self.initial_count + self.search_size


DEFAULT_FORCEFIELD_MOLECULES = ("CO", "CCO", "NC=O")
"""Methanol, ethanol and formamide: small, flexible, three elements; a default campaign takes about 10 minutes."""


class ForcefieldSettings(CommonSettings):
    """Everything that defines a forcefield campaign (``python run.py forcefield``); saved as ``run_params.json``.

    The campaign learns an ensemble of interatomic potentials where molecular dynamics with the model goes,
    spending QC only on audits of sampled trajectories and on the structures the ensemble disagrees about most.
    """

    resume_budget: ClassVar[str] = "qc_budget"

    qc_workers: Annotated[int, Field(gt=0)] = Field(
        1, description="Parsl workers in the qc partition (xTB energies and forces take milliseconds: one is plenty)"
    )
    ml_workers: Annotated[int, Field(gt=0)] = Field(
        default_factory=_default_qc_workers, description="Parsl workers in the ml partition (default: one per core; "
        "training, MD and inference are this campaign's heavy work)"
    )
    molecules: list[str] = Field(
        list(DEFAULT_FORCEFIELD_MOLECULES), min_length=1,
        description="Starting molecules: SMILES or QM9 indices (a QM9 molecule starts from QM9's B3LYP geometry, "
        "any other SMILES from an RDKit embedding relaxed at the campaign's level of theory), or structure files "
        f"that ASE reads (xyz, extxyz, pdb, ...) (default: {' '.join(DEFAULT_FORCEFIELD_MOLECULES)})",
    )
    qc_budget: Annotated[int, Field(gt=0)] = Field(
        400, description="QC calculations (energies and forces) in the whole campaign, initial ones included"
    )
    initial_displacements: Annotated[int, Field(ge=0)] = Field(
        15, description="Randomly displaced copies of each starting structure in the initial training set"
    )
    displacement_scale: Annotated[float, Field(gt=0, le=0.5)] = Field(
        0.04, description="Standard deviation of the initial random displacements, Å"
    )
    ensemble_size: Annotated[int, Field(ge=2)] = Field(
        4, description="Potentials in the ensemble, each trained on its own bootstrap sample as one ml task"
    )
    retrain_after: Annotated[int, Field(gt=0)] = Field(
        48, description="New QC results that start the next training round"
    )
    first_epochs: Annotated[int, Field(gt=0)] = Field(
        200, description="Training epochs of the first round (from the starting weights)"
    )
    train_epochs: Annotated[int, Field(gt=0)] = Field(
        60, description="Training epochs of later rounds (fine-tuning from each member's previous weights)"
    )
    learning_rate: Annotated[float, Field(gt=0, le=1)] = Field(
        1e-2, description="Peak learning rate of every training round (cosine decay to a twentieth within a round)"
    )
    parallel_samplers: Annotated[int, Field(gt=0)] = Field(
        2, description="MD runs kept going at once (slots move between sampling and QC as their queues change)"
    )
    temperature: Annotated[float, Field(gt=0, le=5000)] = Field(600.0, description="MD temperature, K")
    timestep: Annotated[float, Field(gt=0, le=5)] = Field(0.5, description="MD time step, fs")
    sample_every: Annotated[int, Field(gt=0)] = Field(
        10, description="MD steps between structures sent to the selection pool"
    )
    min_run_length: Annotated[int, Field(gt=0)] = Field(20, description="Fewest MD steps of one sampling run")
    max_run_length: Annotated[int, Field(gt=0)] = Field(400, description="Most MD steps of one sampling run")
    energy_tolerance: Annotated[float, Field(gt=0)] = Field(
        0.01, description="Audit: a trajectory continues when the model's energy is within this of QC's, eV/atom"
    )
    inference_batch: Annotated[int, Field(gt=0)] = Field(
        64, description="Pooled structures that start an inference round of the selector"
    )
    n_to_select: Annotated[int, Field(gt=0)] = Field(
        16, description="Structures the selector picks for QC from each inference round"
    )
    selector: Literal["disagreement", "random"] = Field(
        "disagreement", description="Active learning by ensemble disagreement, or random picks from the same pool "
        "(the baseline of scripts/bench_forcefield.py)",
    )
    test_steps: Annotated[int, Field(gt=0)] = Field(
        400, description="Steps of the QC reference MD per molecule that forms the held-out test set (cached)"
    )
    test_every: Annotated[int, Field(gt=0)] = Field(
        10, description="Reference MD steps between test-set structures"
    )
    stability_runs: Annotated[int, Field(ge=0)] = Field(
        6, description="MD runs with the final ensemble that measure its stability"
    )
    stability_steps: Annotated[int, Field(gt=0)] = Field(1000, description="MD steps of each stability run")

    @model_validator(mode="after")
    def _check(self) -> ForcefieldSettings:
        """Fill the level of theory and reject option combinations that cannot work together."""
        self._fill_level_of_theory()
        if self.min_run_length > self.max_run_length:
            raise ValueError(f"--min-run-length {self.min_run_length} exceeds --max-run-length {self.max_run_length}")
        if self.sample_every > self.min_run_length:
            raise ValueError(f"--sample-every {self.sample_every} exceeds --min-run-length {self.min_run_length}: "
                             "short runs would pool no structure")
        if self.test_every > self.test_steps:
            raise ValueError(f"--test-every {self.test_every} exceeds --test-steps {self.test_steps}")
        initial = len(self.molecules) * (1 + self.initial_displacements)
        if initial >= self.qc_budget:
            raise ValueError(f"--qc-budget {self.qc_budget} leaves nothing after the {initial} initial calculations "
                             "(molecules × (1 + --initial-displacements))")
        return self

    @property
    def initial_count(self) -> int:
        """QC calculations of the initial training set."""
        return len(self.molecules) * (1 + self.initial_displacements)


class QCMachineSettings(BaseModel):
    """Machine-dependent settings for one QC task, handed to ``qcengine.compute(task_config=...)``.

    Field names are QCEngine's own ``TaskConfig`` names, so the dictionary goes to QCEngine unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    ncores: Annotated[int, Field(gt=0)] = Field(1, description="Cores per QC task")
    memory: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(2.0, description="Memory per QC task, GiB")
    scratch_directory: str | None = Field(
        None, description="Where QC codes write scratch files (default: the run directory's qc-scratch/)"
    )
    scratch_messy: bool = Field(False, description="Keep scratch files after a QC task (for debugging)")
    use_mpiexec: bool = Field(False, description="Launch NWChem through mpiexec_command")
    mpiexec_command: str | None = Field(
        None, description="MPI launcher template, with {nnodes}, {ranks_per_node}, {total_ranks}, {cores_per_rank}"
    )
    retries: Annotated[int, Field(ge=0)] = Field(0, description="QCEngine retries of random QC failures")

    def task_config(self, run_dir: Path | None = None) -> dict:
        """The ``task_config`` dictionary for QCEngine, with the scratch directory made absolute."""
        config = self.model_dump(exclude_none=True)
        scratch = self.scratch_directory
        if scratch is None and run_dir is not None:
            scratch = str((run_dir / "qc-scratch").resolve())
        if scratch is not None:
            Path(scratch).mkdir(parents=True, exist_ok=True)
            config["scratch_directory"] = scratch
        return config


class SettingsError(ValueError):
    """A settings file that cannot be used; the message is meant for the user as is."""


def load_qc_config(path: Path, site: str) -> QCMachineSettings:
    """Read the section for ``site`` from a ``qcengine.yml``-style file and validate it.

    QCEngine itself only reads files named ``qcengine.yaml``, so molsteer reads its own file here and
    passes the values to every QC task explicitly.

    Raises:
        SettingsError: the file is missing, is not YAML, lacks the site, or holds unknown or invalid keys.
    """
    where = f"QC settings file {one_line(str(path))}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise SettingsError(f"{where} does not exist") from exc
    except IsADirectoryError as exc:
        raise SettingsError(f"{where} is a directory, not a file") from exc
    except PermissionError as exc:
        raise SettingsError(f"{where} cannot be read: permission denied") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{where} is not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where} is not valid YAML: {one_line(str(exc))}") from exc
    except (OSError, RecursionError, ValueError) as exc:  # nesting or numbers too deep or large for the parser
        raise SettingsError(f"{where} cannot be read: {one_line(f'{type(exc).__name__}: {exc}')}") from exc
    if not isinstance(data, dict) or site not in data:
        raise SettingsError(f"{where} has no section for site '{site}'")
    try:
        return QCMachineSettings.model_validate(data[site] or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(_key(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"{where}, section '{site}': {one_line(problems)}") from exc
    except (RecursionError, ValueError) as exc:
        raise SettingsError(f"{where}, section '{site}': {one_line(f'{type(exc).__name__}: {exc}')}") from exc


def _key(part: object) -> str:
    """A key of the file as the user should read it: quoted when it is not a plain name."""
    return part if isinstance(part, str) and part.isidentifier() else repr(part)


def one_line(text: str, limit: int = 300) -> str:
    """Whitespace (line breaks included) collapsed, and cut: an error message is one line on the terminal."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
