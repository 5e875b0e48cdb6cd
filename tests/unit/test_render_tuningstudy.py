"""TuningStudy rendering, golden-tested: the tuner pod (journal on the operator's PVC, on the user's
PVC, or an RDB URL from a secret), its NetworkPolicy, and trial TrainingJobs built from the template;
plus what every rendering must hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from lepton.api import TuningStudy
from lepton.api.constants import Label
from lepton.api.tokens import PROGRESS_TOKEN_ENV
from lepton.api.tuner import STORAGE_URL_ENV, TUNER_CONFIG_ENV, TunerConfig, WarmTrial
from lepton.api.validation import ManifestError, parse
from lepton.render.common import RESTRICTED_CONTAINER, RESTRICTED_POD
from lepton.render.networkpolicy import NetworkSettings
from lepton.render.trials import TrialSpecError, trial_job, trial_manifest
from lepton.render.tuningstudy import TunerSettings, render_claim, render_network_policy, render_tuner
from tests.conftest import assert_golden

UID = "7e1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
TEMPLATE = {
    "model": {"uri": "/models/tiny-gpt2", "init": "config"},
    "data": {"datasetRef": {"name": "tickets"}, "validationFraction": 0.1},
    "hyperparameters": {"maxSteps": 200, "evalEverySteps": 20, "batchSize": 8},
    "nodes": 1,
    "gpusPerNode": 1,
    "output": {"pvc": {"claimName": "models", "path": "search"}},
}
SPACE = [
    {"name": "learningRate", "type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    {"name": "batchSize", "type": "categorical", "choices": ["8", "16"]},
    {"name": "nodes", "type": "int", "low": 1, "high": 4},
]


def study(**spec: Any) -> TuningStudy:
    doc = {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "lr-search", "namespace": "team-a", "uid": UID},
        "spec": {"objective": {"metric": "eval_loss"}, "searchSpace": SPACE, "maxTrials": 8, "parallelism": 2,
                 "trialTemplate": {"trainingJob": TEMPLATE}} | spec,
    }  # fmt: skip
    resource = parse(doc)
    assert isinstance(resource, TuningStudy)
    return resource


TUNERS: dict[str, dict[str, Any]] = {
    "tuner-default-storage": {},
    "tuner-pvc-journal": {"storage": {"pvc": {"claimName": "studies", "path": "lr"}},
                          "scheduling": {"nodeSelector": {"pool": "cpu"}}},
    "tuner-rdb": {"storage": {"urlSecretRef": {"name": "optuna-db", "key": "url"}},
                  "sampler": {"type": "qmc", "seed": 3}, "pruner": {"type": "hyperband", "minResource": 20},
                  "enqueue": [{"learningRate": "0.001", "batchSize": "16"}]},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TUNERS))
def test_tuner_matches_golden(case: str) -> None:
    s = study(**TUNERS[case])
    children = [render_tuner(s, TunerSettings(), "token-abc", [WarmTrial(parameters={"learningRate": "0.003"},
                                                                         values=[1.5])])]  # fmt: skip
    if s.spec.storage is None:
        children.append(render_claim(s))
    children.append(render_network_policy(s, NetworkSettings("lepton-system", "monitoring")))
    assert_golden(f"tuningstudy-{case}.yaml", yaml.safe_dump_all(children, sort_keys=True))


@pytest.mark.parametrize("case", sorted(TUNERS))
def test_the_tuner_is_one_restricted_pod_without_api_access(case: str) -> None:
    pod = render_tuner(study(**TUNERS[case]), TunerSettings(), "t")
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert pod["metadata"]["name"] == "lr-search-tuner"  # fixed: the apiserver allows one pod per name
    assert spec["automountServiceAccountToken"] is False and spec["securityContext"] == RESTRICTED_POD
    assert container["securityContext"] == RESTRICTED_CONTAINER
    assert spec["restartPolicy"] == "Always"
    env = {e["name"]: e for e in container["env"]}
    assert env[PROGRESS_TOKEN_ENV]["value"] == "t"
    config = TunerConfig.model_validate_json(env[TUNER_CONFIG_ENV]["value"])
    assert config.uid == UID and config.study == "team-a/lr-search"
    if case == "tuner-rdb":  # the URL only as a secretKeyRef: never in the config, status or logs
        assert env[STORAGE_URL_ENV] == {"name": STORAGE_URL_ENV,
                                        "valueFrom": {"secretKeyRef": {"name": "optuna-db", "key": "url"}}}  # fmt: skip
        assert config.storage == "rdb" and "optuna-db" not in env[TUNER_CONFIG_ENV]["value"]
        assert not spec["volumes"][1:]
    else:
        claim = spec["volumes"][-1]["persistentVolumeClaim"]["claimName"]
        assert claim == ("studies" if case == "tuner-pvc-journal" else "lr-search-tuner")
        assert config.storage == "journal" and config.journal_dir is not None


TRIALS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "trial-first-run": ({"learningRate": 0.00031234567, "batchSize": "16", "nodes": 2}, {}, 0),
    "trial-retry-elastic-template": (
        {"learningRate": 0.001, "batchSize": "8", "nodes": 3},
        {"nodes": None, "minNodes": 1, "maxNodes": 2, "startupDeadlineSeconds": 120,
         "output": {"uri": "/out/search"}},
        2,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TRIALS))
def test_trial_trainingjob_matches_golden(case: str) -> None:
    params, template_change, retry = TRIALS[case]
    template = {k: v for k, v in (TEMPLATE | template_change).items() if v is not None}
    s = study(trialTemplate={"trainingJob": template})
    job = trial_job(s, 5, params, retry=retry, dataset_version="0123456789abcdef")
    assert_golden(f"tuningstudy-{case}.yaml", yaml.safe_dump(trial_manifest(s, job), sort_keys=True))


def test_a_trial_carries_its_study_number_parameters_version_and_own_output() -> None:
    s = study()
    job = trial_job(s, 12, {"learningRate": 0.002, "batchSize": "16", "nodes": 2}, dataset_version="abc")
    assert job.metadata.name == "lr-search-12"
    assert job.metadata.labels[Label.TRIAL] == "12" and job.metadata.labels[Label.NAME] == "lr-search"
    assert json.loads(job.metadata.annotations[Label.PARAMETERS]) == {"batchSize": "16", "learningRate": "0.002",
                                                                      "nodes": "2"}  # fmt: skip
    spec = job.spec
    assert (spec.hyperparameters.learning_rate, spec.hyperparameters.batch_size, spec.nodes) == (0.002, 16, 2)
    assert spec.hyperparameters.seed == 42  # the template's seed: trials differ only by their parameters
    assert spec.data.dataset_ref is not None and spec.data.dataset_ref.version == "abc"
    assert spec.output.pvc is not None and spec.output.pvc.path == "search/lr-search-12"
    assert spec.startup_deadline_seconds == 900  # a trial that cannot start fails, and is retried
    assert trial_job(s, 12, {"learningRate": 0.002, "batchSize": "16", "nodes": 2}, retry=1).metadata.name == (
        "lr-search-12-r1"
    )


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"lrScheduler": "exponential"}, "hyperparameters.lrScheduler"),
        ({"batchSize": "0"}, "hyperparameters.batchSize"),
        ({"nodes": 0}, "nodes"),
    ],
)
def test_parameters_that_make_an_invalid_trainingjob_say_which_field(params: dict[str, Any], words: str) -> None:
    with pytest.raises(TrialSpecError, match=words):
        trial_job(study(), 0, params)


CUSTOM_TEMPLATE = {
    "trainer": {"image": "registry.example.com/team/mnist:1", "command": ["python", "mnist.py"],
                "hyperparameters": {"lr": 0.1, "hidden_size": 32, "optimizer": {"name": "sgd", "momentum": 0.9}}},
    "nodes": 1,
    "output": {"pvc": {"claimName": "models", "path": "search"}},
}  # fmt: skip
CUSTOM_SPACE = [
    {"name": "lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True},
    {"name": "hidden_size", "type": "categorical", "choices": ["16", "64"]},
    {"name": "nodes", "type": "int", "low": 1, "high": 2},
]


def test_a_trial_of_your_own_program_gets_its_parameters_in_trainer_hyperparameters() -> None:
    """Any parameter name goes into trainer.hyperparameters (the program's LEPTON_HYPERPARAMETERS), typed
    as the template has it; what the template sets and the study does not search stays."""
    s = study(searchSpace=CUSTOM_SPACE, trialTemplate={"trainingJob": CUSTOM_TEMPLATE})
    job = trial_job(s, 3, {"lr": 0.02, "hidden_size": "64", "nodes": 2})
    assert job.spec.trainer is not None and job.spec.hyperparameters is None and job.spec.nodes == 2
    assert job.spec.trainer.hyperparameters == {"lr": 0.02, "hidden_size": 64,
                                                "optimizer": {"name": "sgd", "momentum": 0.9}}  # fmt: skip
    assert job.spec.output.pvc is not None and job.spec.output.pvc.path == "search/lr-search-3"
    assert job.spec.data is None  # a program that reads no data set gets none


def test_a_parameter_name_is_free_only_for_your_own_program() -> None:
    with pytest.raises(ManifestError, match="a template with trainer"):
        study(searchSpace=CUSTOM_SPACE)  # the built-in trainer has no hyperparameter 'lr'
    assert study(searchSpace=CUSTOM_SPACE, trialTemplate={"trainingJob": CUSTOM_TEMPLATE}).spec.search_space
