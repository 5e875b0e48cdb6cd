"""The tuner: the one process of a TuningStudy that holds its Optuna study, asks and tells.

It serves `lepton.api.tuner`'s sync over HTTP; the operator (or the local backend) alone creates and
stops the trials' TrainingJobs. The study lives in persistent storage (a journal file or an RDB), so
the process may die at any moment and start again without losing or duplicating a trial.
"""
