"""The trainer workload: run by torchrun in every TrainingJob pod (and by the local backend).

It reads one TrainerConfig (lepton.api.contract) and nothing else of the cluster: no Kubernetes API,
no TrainingJob. Progress is served on its metrics port for whoever scrapes it.
"""
