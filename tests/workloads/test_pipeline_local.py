"""`leptonctl run -f examples/pipeline/`: the four resources of the pipeline run on this machine in
dependency order (real data preparation, a real tuner and torchrun trials, the final torchrun job, a
real server answering one request), and the lineage reaches the served model's metadata: the Dataset
version the preparation published, the study's best trial, the final job."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES


def test_the_pipeline_folder_runs_in_dependency_order_and_ends_with_an_answer(tmp_path: Path) -> None:
    for part in ("pipeline", "data", "models"):  # the manifests' relative paths, in a directory of its own
        shutil.copytree(EXAMPLES / part, tmp_path / "examples" / part)
    proc = subprocess.run([sys.executable, "-m", "lepton.cli.main", "run", "-f", "examples/pipeline/"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    err = proc.stderr
    assert proc.returncode == 0, err[-4000:]
    headers = re.findall(r"^== \[\d/4\] (\w+) ", err, re.MULTILINE)
    assert headers == ["Dataset", "TuningStudy", "TrainingJob", "InferenceService"], err[-3000:]
    version = re.search(r"published version ([0-9a-f]{16}) ", err)
    best = re.search(r"^best: trial (\d+) = ", err, re.MULTILINE)
    assert version and best, err[-3000:]
    assert re.search(r"^asked POST /v1/completions .*: answered in [\d.]+s: [\'\"]", err, re.MULTILINE), err[-2000:]
    lineage = re.search(r"^model 'pipeline-chat' metadata: (.*)$", err, re.MULTILINE)
    assert lineage is not None, err[-2000:]
    fields = dict(item.split("=", 1) for item in lineage.group(1).split(", "))
    expected = {"dataset": "pipeline-tickets", "datasetVersion": version.group(1), "tuningStudy": "pipeline-search",
                "trial": best.group(1), "trainingJob": "pipeline-final",
                "baseModel": f".lepton/models/pipeline-search/pipeline-search-{best.group(1)}"}  # fmt: skip
    assert fields == expected, err[-3000:]
    meta = json.loads((tmp_path / ".lepton/models/pipeline-final/lepton-training.json").read_text())
    assert meta["lineage"] == {k: int(v) if k == "trial" else v for k, v in fields.items()}
    assert "== pipeline succeeded: 4 of 4 step(s)" in err

    again = subprocess.run([sys.executable, "-m", "lepton.cli.main", "run", "-f", "examples/pipeline/"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing recomputed" in again.stderr and "already finished" in again.stderr, again.stderr[-3000:]
    assert lineage.group(0) in again.stderr, again.stderr[-3000:]  # the same model, the same lineage
