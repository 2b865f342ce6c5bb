"""Site configurations and their options, without starting anything (tests/test_sites_e2e.py starts them)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.launchers import MpiExecLauncher, SimpleLauncher, SrunLauncher
from parsl.providers import SlurmProvider

import campaigns.cli as run
from configs.settings.models import CampaignSettings, SettingsError
from configs.sites.catalog import SiteOptions, batch_job_nodes, pbs, slurm, split_nodes, workers_share_files
from configs.sites.catalog import multisite as multisite_site
from configs.sites.remote import SSHProvider, _block_script
from methods.simulate import mpi_task_config


def test_node_file_per_core_lines_are_deduplicated_but_an_emulation_is_kept(tmp_path):
    per_core = tmp_path / "per-core"
    per_core.write_text("n1\nn1\nn2\nn2\n")
    assert batch_job_nodes({"PBS_NODEFILE": str(per_core)})[0] == ["n1", "n2"]
    emulation = tmp_path / "emulation"
    emulation.write_text("vm\nvm\nvm\n")
    assert batch_job_nodes({"PBS_NODEFILE": str(emulation)})[0] == ["vm", "vm", "vm"]
    nodes, source = batch_job_nodes({"COBALT_NODEFILE": str(per_core)})
    assert nodes == ["n1", "n2"] and "COBALT_NODEFILE" in source


@pytest.mark.parametrize("environ, message", [
    ({}, "none of $PBS_NODEFILE"),
    ({"PBS_NODEFILE": "/nonexistent/nodes"}, "cannot be read"),
])
def test_no_batch_job_is_one_clear_error(environ, message):
    with pytest.raises(SettingsError, match=message.replace("$", r"\$")):
        batch_job_nodes(environ)


def test_split_leaves_ml_the_last_nodes_and_refuses_too_small_a_job():
    assert split_nodes(["a", "b", "c", "d"], 1, 1) == (["a", "b", "c"], ["d"])
    assert split_nodes(["a"], 1, 1) == (["a"], ["a"])  # a one-node job shares its node
    with pytest.raises(SettingsError, match="leaves none for QC"):
        split_nodes(["a", "b"], 2, 1)
    with pytest.raises(SettingsError, match="--qc-nodes-per-task 3"):
        split_nodes(["a", "b", "c"], 1, 3)


def _pbs_config(tmp_path, monkeypatch, **options):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("n1\nn2\nn3\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir, pbs(run_dir, SiteOptions(qc_workers=4, ml_workers=2, address="10.1.2.3", **options))


def test_pbs_site_splits_the_job_and_starts_pools_with_mpiexec(tmp_path, monkeypatch):
    run_dir, config = _pbs_config(tmp_path, monkeypatch, ml_nodes=1)
    qc, ml = config.executors
    assert (run_dir / "nodes" / "qc.nodes").read_text().split() == ["n1", "n2"]
    assert (run_dir / "nodes" / "ml.nodes").read_text().split() == ["n3"]
    for executor, label, nodes in ((qc, "qc", 2), (ml, "ml", 1)):
        assert isinstance(executor, HighThroughputExecutor) and executor.label == label
        assert executor.address == "10.1.2.3" and executor.encrypted
        assert isinstance(executor.provider.launcher, MpiExecLauncher)
        assert executor.provider.nodes_per_block == nodes
        assert f"PBS_NODEFILE={run_dir.resolve() / 'nodes' / f'{label}.nodes'}" in executor.provider.worker_init
    assert qc.max_workers_per_node == 4 and ml.max_workers_per_node == 2
    assert "--map-by node" in ml.provider.launcher.overrides


def test_pbs_multi_node_qc_uses_parsls_mpi_executor(tmp_path, monkeypatch):
    _, config = _pbs_config(tmp_path, monkeypatch, ml_nodes=1, qc_nodes_per_task=2, mpi_flavor="mpich")
    qc, ml = config.executors
    assert isinstance(qc, MPIExecutor) and qc.encrypted and qc.address == "10.1.2.3"
    assert isinstance(qc.provider.launcher, SimpleLauncher)
    assert qc.max_workers_per_node == 1  # two QC nodes, two per task
    assert "--ppn 1" in ml.provider.launcher.overrides


def test_slurm_site_requests_blocks_with_the_users_options(tmp_path):
    config = slurm(tmp_path, SiteOptions(
        qc_workers=8, ml_workers=1, address="10.0.0.1", qc_nodes=2, ml_nodes=1, slurm_account="chem",
        slurm_partition="regular", slurm_qos="debug", walltime="00:30:00", shared_nodes=True,
        scheduler_options="--constraint=cpu; #SBATCH --gpus-per-node=4", worker_init="module load python"))
    qc, ml = config.executors
    assert config.strategy == "simple"  # a block lost to walltime is replaced
    for executor, nodes in ((qc, 2), (ml, 1)):
        provider = executor.provider
        assert isinstance(provider, SlurmProvider) and isinstance(provider.launcher, SrunLauncher)
        assert (provider.partition, provider.account, provider.qos) == ("regular", "chem", "debug")
        assert provider.nodes_per_block == nodes and provider.walltime == "00:30:00" and not provider.exclusive
        assert provider.scheduler_options.startswith("#SBATCH --constraint=cpu\n#SBATCH --gpus-per-node=4\n")
        assert provider.worker_init.startswith("module load python")
        assert executor.address == "10.0.0.1"


def test_multisite_keeps_qc_local_and_sends_ml_over_ssh(tmp_path):
    config = multisite_site(tmp_path / "20260101T000000Z-abc", SiteOptions(
        qc_workers=2, ml_workers=3, remote_host="gpu.example.org", remote_dir="work/ms",
        remote_init="source ~/env/bin/activate", ml_worker_port=50123))
    qc, ml = config.executors
    assert qc.address == ml.address == "127.0.0.1"
    assert isinstance(ml.provider, SSHProvider) and ml.provider.host == "gpu.example.org"
    assert ml.worker_port == 50123 and ml.encrypted
    assert ml.provider.remote_dir == "work/ms/20260101T000000Z-abc"
    assert ml.provider.worker_init.startswith("source ~/env/bin/activate")
    assert "PATH=" not in ml.provider.worker_init  # this machine's environment means nothing there


def test_remote_block_stops_its_workers_when_ssh_goes_away():
    script = _block_script("d/run", "block-1", "source env", "process_worker_pool.py --cert_dir d/run/certificates")
    start = script.index("setsid")
    wait = script.index("cat > /dev/null")
    stop = script.index("kill -TERM -- -$pid")
    assert start < wait < stop and "rm -rf d/run/certificates" in script


def test_mpi_command_gets_the_tasks_nodes():
    config = {"use_mpiexec": True, "ncores": 4, "mpiexec_command": "mpiexec -n {total_ranks} -H {host_slots}"}
    filled = mpi_task_config(config, {"PARSL_MPI_NODELIST": "x1,x2"})
    assert filled["mpiexec_command"] == "mpiexec -n {total_ranks} -H x1:4,x2:4" and filled["nnodes"] == 2
    mpich = {**config, "mpiexec_command": "mpiexec --hosts {hosts} -n {total_ranks}"}
    filled = mpi_task_config(mpich, {"PARSL_MPI_NODELIST": "x1,x2"})
    assert filled["mpiexec_command"].startswith("mpiexec --hosts x1,x2")
    assert mpi_task_config({**config, "use_mpiexec": False}, {}) == {**config, "use_mpiexec": False}
    assert mpi_task_config(config, {})["nnodes"] == 1  # this node only


@pytest.mark.parametrize("options, message", [
    ({"site": "multisite"}, "--remote-host"),
    ({"task_server": "globus", "globus_qc_endpoint": "x"}, "--globus-ml-endpoint"),
    ({"task_server": "globus", "globus_qc_endpoint": "x", "globus_ml_endpoint": str(uuid.uuid4())},
     "--globus-qc-endpoint is not a Globus Compute endpoint id"),
    ({"qc_nodes_per_task": 2}, "needs --site pbs"),
    ({"qc_nodes_per_task": 2, "site": "pbs"}, "needs --qc-code nwchem"),
    ({"walltime": "1 hour"}, "String should match pattern"),
])
def test_site_options_that_cannot_work_together(options, message):
    with pytest.raises(ValueError, match=message):
        CampaignSettings(**options)


def test_a_resumed_run_may_move_to_another_site(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run_params.json").write_text(json.dumps(run.saved_parameters("design", CampaignSettings())))
    campaign, settings, _, resume = run.parse_settings(
        ["--resume", str(run_dir), "--site", "slurm", "--slurm-partition", "debug", "--shared-nodes"])
    assert (campaign, settings.site, settings.slurm_partition, settings.shared_nodes) == ("design", "slurm", "debug",
                                                                                         True)
    assert resume == Path(run_dir)
    with pytest.raises(SystemExit):
        run.parse_settings(["--resume", str(run_dir), "--model", "knn"])  # the campaign itself may not change
    assert "--model: cannot be changed" in capsys.readouterr().err


def test_proxies_go_through_redis_only_when_workers_do_not_share_files():
    assert workers_share_files(CampaignSettings(site="slurm"))
    assert not workers_share_files(CampaignSettings(site="multisite", remote_host="h"))
    endpoint = str(uuid.uuid4())
    assert not workers_share_files(CampaignSettings(task_server="globus", globus_qc_endpoint=endpoint,
                                                    globus_ml_endpoint=endpoint))
