"""The names of the files in a run directory, defined once for every writer and reader.

Each ``*_records.jsonl`` holds one JSON object per line (see :mod:`store.rundir`); the names are part of the
run directory's format: a run made by an older molsteer still resumes, so they never change.
"""

# Both campaigns
SIMULATION_RECORDS = "simulation_records.jsonl"  # every finished (or abandoned) QC calculation
TRAINING_RECORDS = "training_records.jsonl"  # every model training (design) / ensemble member and evaluation
SUBMITTED_RECORDS = "submitted_records.jsonl"  # every QC task as it was sent: what a resume redoes
ATTEMPT_RECORDS = "attempt_records.jsonl"  # one line per start of the run (the first and every --resume)

# The design campaign
SCREENING_RECORDS = "screening_records.jsonl"
RL_RECORDS = "rl_records.jsonl"
FEATURE_RECORDS = "feature_records.jsonl"

# The forcefield campaign
SAMPLING_RECORDS = "sampling_records.jsonl"
INFERENCE_RECORDS = "inference_records.jsonl"
SELECTION_RECORDS = "selection_records.jsonl"
ALLOCATION_RECORDS = "allocation_records.jsonl"
STABILITY_RECORDS = "stability_records.jsonl"
REFERENCE_RECORDS = "reference_records.jsonl"
STARTING_STRUCTURES = "starting_structures.extxyz"  # the forcefield's starts, as relaxed (a resume reuses them)
TRAIN_DB = "train.db"  # the forcefield's training structures with QC energies and forces (ASE database)

# Other files
RUN_PARAMS = "run_params.json"
QC_SPEC = "qc_spec.json"
REPORT = "report.md"
SUMMARY = "summary.json"
STARTUP = "startup.json"
PROCESSES = "processes.json"
