"""The model server (`python -m lepton.workloads.server`): a transformers model behind the Open Inference
Protocol v2 and OpenAI-compatible routes, with dynamic batching, Prometheus metrics and graceful drain."""
