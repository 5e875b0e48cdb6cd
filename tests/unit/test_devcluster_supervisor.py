"""The dev cluster's apiserver restart starts the apiserver again, as a kubelet would, when a start dies or
stays silent; a stand-in process plays the apiserver (no cluster needed for this rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton.cli.devcluster import DevCluster, DevClusterError

# Each start reads how many came before: the first exits 3, the second hangs without a word, the third
# says it is up (and `healthy` believes it).
STARTS = """
n=$(cat starts 2>/dev/null || echo 0); echo $((n + 1)) > starts
case $n in 0) exit 3 ;; 1) exec sleep 60 ;; *) echo up; exec sleep 60 ;; esac
"""


class StandIn(DevCluster):
    def __init__(self, home: Path) -> None:
        super().__init__("stand-in", log=lambda _: None)
        self.home = home
        (home / "kwok" / "clusters" / self.name / "pids").mkdir(parents=True)
        self.logfile = home / "apiserver.log"
        self.logfile.write_text("the old apiserver's last words\n")

    def healthy(self) -> bool:
        return "up" in self.logfile.read_text().splitlines()


def test_a_start_that_dies_or_stays_silent_is_started_again_and_recorded(tmp_path: Path) -> None:
    cluster = StandIn(tmp_path)
    proc = cluster._supervise_apiserver(["sh", "-c", STARTS], str(tmp_path), str(cluster.logfile), timeout=30,
                                        silent_seconds=1)  # fmt: skip
    try:
        assert proc.poll() is None and (tmp_path / "starts").read_text().strip() == "3"
        assert [r.split(": ", 1)[1] for r in cluster.relaunches] == ["exit code 3", "silent for 1s, killed"]
        assert (tmp_path / "kwok" / "clusters" / "stand-in" / "pids" / "kube-apiserver.pid").read_text() == str(
            proc.pid
        )
    finally:
        proc.kill()
        proc.wait()


def test_a_start_that_never_comes_up_fails_in_time_and_says_how_each_ended(tmp_path: Path) -> None:
    cluster = StandIn(tmp_path)
    with pytest.raises(DevClusterError, match=r"not ready 2s after its restart.*exit code 1"):
        cluster._supervise_apiserver(["sh", "-c", "echo no etcd; exit 1"], str(tmp_path), str(cluster.logfile),
                                     timeout=2, silent_seconds=1)  # fmt: skip
    assert all("last logged: no etcd" in r for r in cluster.relaunches)
