"""Names shared by the thinker, the task server and the Parsl sites, defined once.

Topics are the Colmena queue channels between the thinker's agents and the task server; executor labels
are the Parsl worker partitions. A method's topic and its executor are independent: QC methods run on the
``qc`` partition and report on the ``simulator`` topic, ML methods on ``ml`` and ``ML``.
"""

SIMULATION_TOPIC = "simulator"
ML_TOPIC = "ML"
TOPICS = (SIMULATION_TOPIC, ML_TOPIC)

QC_EXECUTOR = "qc"
ML_EXECUTOR = "ml"
EXECUTORS = (QC_EXECUTOR, ML_EXECUTOR)

# The forcefield campaign: one topic per kind of result, so each agent's result processor sees only its own.
FF_QC_TOPIC = "simulate"  # energies and forces of training candidates (qc)
FF_REFERENCE_TOPIC = "reference"  # the held-out QC reference trajectories (qc)
FF_TRAIN_TOPIC = "train"  # ensemble members (ml)
FF_SAMPLE_TOPIC = "sample"  # MD runs with the current model (ml)
FF_INFER_TOPIC = "infer"  # ensemble predictions on pooled structures (ml)
FF_EVALUATE_TOPIC = "evaluate"  # test-set errors of a new ensemble (ml)
FF_STABILITY_TOPIC = "stability"  # MD stability runs of the final ensemble (ml)
FF_TOPICS = (FF_QC_TOPIC, FF_REFERENCE_TOPIC, FF_TRAIN_TOPIC, FF_SAMPLE_TOPIC, FF_INFER_TOPIC, FF_EVALUATE_TOPIC,
             FF_STABILITY_TOPIC)

CAUSE_SEPARATOR = " | "
"""In a record's ``failure_reason``, separates the cause (what ``summary.json`` groups by) from the program
output that came with it (written by the QC methods, read by the thinker's summaries)."""
