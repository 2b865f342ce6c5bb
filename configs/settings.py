"""Validated settings: the campaign options (one pydantic model, also the source of the CLI) and ``qcengine.yml``.

The command line of ``run.py`` is generated from :class:`CampaignSettings`, so every option has exactly one
definition, one default and one description, and the same validation runs whether a campaign is started
from the CLI, from a test or from a later resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from methods.objectives import parse_objective

DEFAULT_METHODS = {"xtb": ("GFN2-xTB", None), "nwchem": ("hf", "sto-3g"), "qm9": ("B3LYP/6-31G(2df,p)", None)}


def _default_qc_workers() -> int:
    """One QC worker per core: QC is the expensive part and runs single-threaded per task by default."""
    return max(1, os.cpu_count() or 1)


class CampaignSettings(BaseModel):
    """Everything that defines a molecular-design campaign; saved as ``run_params.json``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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
    method: str | None = Field(
        None, description="QC method (default: GFN2-xTB for xtb, hf for nwchem)", min_length=1
    )
    basis: str | None = Field(
        None, description="Basis set for NWChem (default: sto-3g); ignored by xtb", min_length=1
    )
    ie_type: Literal["adiabatic", "vertical"] = Field(
        "adiabatic",
        description="Ionization energy with a relaxed cation (adiabatic) or at the neutral geometry (vertical)",
    )
    generator: Literal["pool", "rl"] = Field(
        "pool",
        description="Where candidates come from: screening the QM9 pool (pool) or a reinforcement-learning "
        "agent that edits molecules to maximize the surrogate's prediction (rl)",
    )
    max_heavy_atoms: Annotated[int, Field(ge=2, le=30)] = Field(
        9, description="Largest molecule (heavy atoms) the RL generator may build"
    )
    model: Literal["gc", "knn", "mpnn"] = Field(
        "gc",
        description="Surrogate: group contributions with Bayesian ridge (gc), k-nearest neighbours "
        "on Morgan fingerprints (knn), or an ensemble of message-passing neural networks (mpnn)",
    )
    ensemble_size: Annotated[int, Field(ge=2)] = Field(
        4, description="MPNN ensemble members, each trained on a bootstrap resample as its own ml task"
    )
    mpnn_epochs: Annotated[int, Field(gt=0)] = Field(64, description="Training epochs of each MPNN member")
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
    pool_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="QM9 molecules sampled (by --seed) as the search space (default: all of QM9)"
    )
    rl_episodes: Annotated[int, Field(ge=0)] = Field(
        10, description="Episodes per round of the reinforcement-learning generator (used by --generator rl)"
    )
    qc_workers: Annotated[int, Field(gt=0)] = Field(
        default_factory=_default_qc_workers, description="Parsl workers in the qc partition"
    )
    ml_workers: Annotated[int, Field(gt=0)] = Field(1, description="Parsl workers in the ml partition")
    seed: int = Field(0, description="Random seed for the initial molecules, embedding and models")
    redis_host: str = Field(
        "127.0.0.1", description="Redis server for the Colmena queues (a local one is started if none answers)"
    )
    redis_port: Annotated[int, Field(gt=0, lt=65536)] = Field(6379, description="Redis port")
    redis_password: str | None = Field(
        None, description="Password of an existing Redis server (a started one gets a random password)"
    )
    site: Literal["local"] = Field("local", description="Parsl site configuration from configs/sites.py")
    qc_config: Path = Field(
        Path("qcengine.yml"), description="File with the machine-dependent QC settings (cores, memory, scratch)"
    )
    runs_dir: Path = Field(Path("runs"), description="Directory that receives one sub-directory per run")

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
        return self

    @property
    def total_evaluations(self) -> int:
        """QC evaluations in the whole campaign: the initial random ones plus the model-guided ones."""
        return self.initial_count + self.search_size


class QCMachineSettings(BaseModel):
    """Machine-dependent settings for one QC task, handed to ``qcengine.compute(task_config=...)``.

    Field names are QCEngine's own ``TaskConfig`` names, so the dictionary goes to QCEngine unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    ncores: Annotated[int, Field(gt=0)] = Field(1, description="Cores per QC task")
    memory: Annotated[float, Field(gt=0)] = Field(2.0, description="Memory per QC task, GiB")
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
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise SettingsError(f"QC settings file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"QC settings file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or site not in data:
        raise SettingsError(f"QC settings file {path} has no section for site '{site}'")
    try:
        return QCMachineSettings.model_validate(data[site] or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"QC settings file {path}, section '{site}': {problems}") from exc
