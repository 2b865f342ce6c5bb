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
