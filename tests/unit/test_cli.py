"""`leptonctl validate` and `leptonctl run` on every kind of bad input: one clear line on stderr that
names the file, a non-zero exit, no traceback; directories searched recursively; a summary count."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lepton.cli.main import main
from tests.conftest import EXAMPLES

DATASET = (EXAMPLES / "dataset.yaml").read_bytes()

# name: (files to write under tmp, the -f argument, what stderr says, with {tmp} for the directory)
BAD_INPUTS: dict[str, tuple[dict[str, bytes], str, str]] = {
    "malformed YAML": (
        {"bad.yaml": b"apiVersion: lepton.ai/v1alpha1\nkind: Dataset\n  name: x: y\n"},
        "bad.yaml",
        "{tmp}/bad.yaml:3:7: invalid YAML: mapping values are not allowed here",
    ),
    "unclosed flow sequence": (
        {"bad.yaml": b"kind: [a\n"},
        "bad.yaml",
        "{tmp}/bad.yaml:2:1: invalid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>'",
    ),
    "binary file": (
        {"blob.yaml": b"\xff\xfe\x00\x01binary"},
        "blob.yaml",
        "{tmp}/blob.yaml: not UTF-8 text (byte 0xff at offset 0)",
    ),
    "control character": (
        {"nul.yaml": b"kind: Data\x00set\n"},
        "nul.yaml",
        "{tmp}/nul.yaml: invalid YAML: character #x0000 at position 10 (special characters are not allowed)",
    ),
    "nested too deeply": (
        {"deep.yaml": b"[" * 5000},
        "deep.yaml",
        "{tmp}/deep.yaml: invalid YAML: nested too deeply",
    ),
    "List with scalar items": (
        {"list.yaml": b"apiVersion: v1\nkind: List\nitems: [1, 2]\n"},
        "list.yaml",
        "{tmp}/list.yaml: items[0] of the List: expected a mapping (a Kubernetes object), got an integer",
    ),
    "List whose items are not a list": (
        {"list.yaml": b"apiVersion: v1\nkind: List\nitems: lots\n"},
        "list.yaml",
        "{tmp}/list.yaml: the List's items must be a list, got a string",
    ),
    "a document that is a list": (
        {"seq.yaml": b"- a\n- b\n"},
        "seq.yaml",
        "{tmp}/seq.yaml: expected a mapping (a Kubernetes object), got a list",
    ),
    "a scalar second document": (
        {"two.yaml": DATASET + b"---\nhello\n"},
        "two.yaml",
        "{tmp}/two.yaml: document 2: expected a mapping (a Kubernetes object), got a string",
    ),
    "missing file": ({}, "missing.yaml", "{tmp}/missing.yaml: No such file or directory"),
}


def _write(tmp_path: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_input_gets_one_line_and_a_nonzero_exit(
    case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, target, line = BAD_INPUTS[case]
    _write(tmp_path, files)
    code = main([command, "-f", str(tmp_path / target)])
    out, err = capsys.readouterr()
    expected = line.format(tmp=tmp_path)
    if command == "run":
        assert (code, err) == (2, f"leptonctl run: {expected}\n")
    else:
        assert (code, err) == (1, expected + "\n")
        assert out == "0 valid, 1 invalid in 1 file\n"


@pytest.mark.parametrize("command, code, prefix", [("validate", 1, "leptonctl validate"), ("run", 2, "leptonctl run")])
def test_a_directory_without_manifests_says_so(
    command: str, code: int, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "job.yaml").write_bytes(DATASET)  # hidden directories are left out
    assert main([command, "-f", str(tmp_path)]) == code
    assert capsys.readouterr().err == f"{prefix}: no manifests found in {tmp_path}\n"


def test_validate_reports_a_binary_file_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, {"a/blob.yaml": b"\x89PNG\r\n\x1a\n\x00", "b/dataset.yaml": DATASET, "c/bad.yml": b"a: [\n"})
    assert main(["validate", "-f", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{tmp_path}/a/blob.yaml: not UTF-8 text (byte 0x89 at offset 0)",
        f"{tmp_path}/c/bad.yml:2:1: invalid YAML: while parsing a flow node expected the node content, "
        "but found '<stream end>'",
    ]
    assert out.splitlines() == [f"{tmp_path}/b/dataset.yaml: Dataset 'support-tickets' is valid",
                                "1 valid, 2 invalid in 3 files"]  # fmt: skip


def test_validate_searches_directories_recursively_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(EXAMPLES)]) == 1  # examples/invalid/ is in it
    out, err = capsys.readouterr()
    valid = sorted({*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("quickstart/*.yaml"), *EXAMPLES.glob("pipeline/*.yaml")})
    invalid = sorted(EXAMPLES.glob("invalid/*.yaml"))
    assert f"{EXAMPLES}/quickstart/trainingjob.yaml: TrainingJob 'quickstart' is valid" in out
    assert f"{EXAMPLES}/invalid/trainingjob-zero-nodes.yaml: TrainingJob " in err
    assert out.splitlines()[-1] == f"{len(valid)} valid, {len(invalid)} invalid in {len(valid) + len(invalid)} files"


def test_validate_all_valid_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(EXAMPLES / "quickstart"), "-f", str(EXAMPLES / "dataset.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 valid, 0 invalid in 2 files"


def test_validate_expands_a_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = yaml.safe_load(DATASET)
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [dataset] * 2}))
    assert main(["validate", "-f", str(tmp_path / "list.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 valid, 0 invalid in 1 file"


INVALID = sorted(EXAMPLES.glob("invalid/*.yaml"))


def test_run_of_a_folder_checks_every_resource_before_running_any(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-f", str(EXAMPLES / "invalid")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"leptonctl run: {INVALID[0]} (") and "is invalid:" in err.splitlines()[0]


def test_run_says_in_one_line_what_a_study_cannot_do_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = yaml.safe_load((EXAMPLES / "tuningstudy.yaml").read_text())
    study["spec"]["storage"] = {"pvc": {"claimName": "studies"}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["run", "-f", str(tmp_path / "study.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leptonctl run: locally the study's journal is kept under the runs directory")
    assert err.count("\n") == 1


def test_run_says_what_is_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    target = EXAMPLES / "invalid" / "trainingjob-zero-nodes.yaml"
    assert main(["run", "-f", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"leptonctl run: {target}: TrainingJob ") and "Traceback" not in err


def test_yaml_numbers_read_as_kubectl_reads_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PyYAML reads `1e-4` (no dot) as a string; kubectl reads it as a number, and so does leptonctl."""
    doc = yaml.safe_load((EXAMPLES / "quickstart" / "trainingjob.yaml").read_text())
    doc["spec"]["hyperparameters"]["learningRate"] = "LR"
    (tmp_path / "lr.yaml").write_text(yaml.safe_dump(doc).replace("LR", "1e-4"))
    assert main(["validate", "-f", str(tmp_path / "lr.yaml")]) == 0, capsys.readouterr().err
