"""Colmena queue topics: the channels between a thinker's agents and the task server, defined once.

Each topic carries one kind of result, so each agent's result processor sees only its own. Topics are steering
vocabulary; where a method runs (the Parsl executor label) is a site's business (:mod:`configs.sites.executors`).
Queues live only as long as a run attempt, so renaming a topic never affects resuming a run directory.
"""

# The design campaign
QC_TOPIC = "qc"  # QC evaluations of molecules and the reference atom energies (qc executor)
ML_TOPIC = "ml"  # surrogate training, scoring, features, generation (ml executor)
DESIGN_TOPICS = (QC_TOPIC, ML_TOPIC)

# The forcefield campaign
FF_QC_TOPIC = "qc"  # energies and forces of training candidates (qc)
FF_REFERENCE_TOPIC = "reference"  # the held-out QC reference trajectories (qc)
FF_TRAIN_TOPIC = "train"  # ensemble members (ml)
FF_SAMPLE_TOPIC = "sample"  # MD runs with the current model (ml)
FF_INFER_TOPIC = "infer"  # ensemble predictions on pooled structures (ml)
FF_EVALUATE_TOPIC = "evaluate"  # test-set errors of a new ensemble (ml)
FF_STABILITY_TOPIC = "stability"  # MD stability runs of the final ensemble (ml)
FF_TOPICS = (FF_QC_TOPIC, FF_REFERENCE_TOPIC, FF_TRAIN_TOPIC, FF_SAMPLE_TOPIC, FF_INFER_TOPIC, FF_EVALUATE_TOPIC,
             FF_STABILITY_TOPIC)

STARTUP_TOPIC = "startup"
"""The warm-up tasks the wiring sends before any campaign starts, apart from every campaign's own topics."""
