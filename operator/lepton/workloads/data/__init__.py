"""The data workload (`python -m lepton.workloads.data`): read a Dataset's sources, run its pipeline
over Arrow record batches, and publish the result under its content hash.

Modules:
- `errors`: `DataError(reason, message, file, line)`, the one error a user can fix; its reason becomes
  the Dataset's condition reason.
- `sources`: list a source's input files (name, size, digest) and stream one file as record batches
  (jsonl, csv, parquet, text), from a path, HTTP(S), S3 or the hub.
- `steps`: the pipeline steps on record batches (columnar, pyarrow.compute); dedupe keeps its state in
  numpy arrays so a resumed run can restore it.
- `minhash`: word n-gram MinHash band hashes shared by near-dedupe and decontamination.
- `stages`: split by a keyed hash, decontamination, augmentation, tokenisation.
- `runner`: the version (content hash), staging, resumable shards, manifest, atomic publish, retention.
- `metrics`, `__main__`: Prometheus metrics and /progress; the entry point writing the summary to the
  termination log.
"""
