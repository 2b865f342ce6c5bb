"""Worker-side code: functions that Parsl runs on the ``qc`` and ``ml`` partitions.

Everything here is importable on a worker without the steering code: modules in ``methods`` import nothing
else of molsteer. Functions sent to the task server are top-level and their inputs and outputs picklable.
"""
