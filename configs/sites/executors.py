"""Parsl executor labels: the worker partitions every site provides, defined once.

QC methods run on ``qc`` workers, ML methods on ``ml`` workers; each campaign says which of its methods runs
where (``campaigns/``), and each site builds one executor per label (:mod:`configs.sites.catalog`).
"""

QC_EXECUTOR = "qc"
ML_EXECUTOR = "ml"
EXECUTORS = (QC_EXECUTOR, ML_EXECUTOR)
