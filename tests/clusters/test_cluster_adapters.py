"""The pure translations of spawner/clusters, without an engine: names and labels, the
engines' argv and sizes from the limits, the head's probe and how its output reads, the
phases, a driver's environment, and the container / service options."""

from __future__ import annotations

import json

import pytest

from spawner.clusters import CLUSTER_BACKENDS, build_cluster_backend, driver_env
from spawner.clusters.base import (
    ROLE_HEAD,
    ROLE_WORKER,
    ClusterPhase,
    ClusterSpec,
    cluster_address,
)
from spawner.clusters.commands import (
    PROBE,
    READY_MARK,
    container_options,
    head_name,
    healthcheck,
    network_name,
    ray_sizes,
    read_probe,
    spark_worker_memory_mb,
    worker_name,
    workers_service_name,
)
from spawner.clusters.docker import cluster_phase, phase_of_head
from spawner.clusters.swarm import earlier_failures, head_phase, lost_workers, service_options
from spawner.jobs.base import JobSpec
from spawner.jobs.config import BackendConfig
from spawner.jobs.swarm import service_options as job_service_options

MB = 2**20


def spec(kind: str = "ray", **overrides: object) -> ClusterSpec:
    values: dict[str, object] = {
        "cluster_id": 7, "owner": "alice", "kind": kind, "image": "dockyard/notebook:latest",
        "workers": 3, "worker_cpu": 2.0, "worker_memory_mb": 4096, "head_cpu": 1.0,
        "head_memory_mb": 2048, "env": {"DOCKYARD_DATA_ROOT": "/dockyard/data"}}
    return ClusterSpec(**{**values, **overrides})  # type: ignore[arg-type]


def test_names_and_labels_carry_the_namespace_cluster_owner_and_run() -> None:
    assert network_name("prod", 7) == "dockyard-prod-cluster-7"
    assert head_name("prod", 7) == "dockyard-prod-cluster-7-head"
    assert worker_name("prod", 7, 2) == "dockyard-prod-cluster-7-worker-2"
    assert workers_service_name("prod", 7) == "dockyard-prod-cluster-7-workers"
    assert spec(run_id=12).labels("prod", ROLE_HEAD) == {
        "dockyard.namespace": "prod", "dockyard.role": "cluster-head",
        "dockyard.cluster-id": "7", "dockyard.owner": "alice", "dockyard.run-id": "12"}
    assert "dockyard.run-id" not in spec().labels("prod", ROLE_WORKER)
    with pytest.raises(ValueError, match="unknown cluster kind"):
        spec(kind="dask")


def test_ray_is_sized_from_the_container_limit() -> None:
    sizes = ray_sizes(2048)
    assert sizes.object_store_bytes == 614 * MB  # 30 %
    assert sizes.shm_bytes > sizes.object_store_bytes  # the store fits in /dev/shm
    assert sizes.memory_bytes == (2048 - 614 - 409) * MB  # less a reserve for Ray itself
    small = ray_sizes(512)
    assert small.object_store_bytes >= 80 * MB and small.memory_bytes > 0
    assert small.shm_bytes + small.memory_bytes < 512 * MB


def test_spark_workers_leave_room_for_the_jvms() -> None:
    assert spark_worker_memory_mb(2048) == 2048 - 256 - 409
    assert spark_worker_memory_mb(4096) == 4096 - 256 - 819
    assert spark_worker_memory_mb(512) == 450  # Spark's smallest executor


def test_the_engines_own_commands() -> None:
    head = container_options(spec(), ROLE_HEAD, namespace="prod", user="1000",
                             pids_limit=512)["command"]
    assert head[:2] == ["/bin/sh", "-c"]
    assert "exec ray start --head --port=6379 --ray-client-server-port=10001 " \
           "--dashboard-host=0.0.0.0 --dashboard-port=8265 --num-cpus=1" in head[2]
    assert '--node-ip-address="$ip"' in head[2] and "--block" in head[2]
    worker = container_options(spec(), ROLE_WORKER, namespace="prod", user="1000",
                               pids_limit=512, index=1)["command"][2]
    assert worker.startswith("until getent hosts head >/dev/null; do sleep 0.5; done; ")
    assert "exec ray start --address=head:6379 --num-cpus=2" in worker
    assert f"--object-store-memory={ray_sizes(4096).object_store_bytes}" in worker

    spark_head = container_options(spec("spark"), ROLE_HEAD, namespace="prod", user="1000",
                                   pids_limit=512)["command"]
    assert spark_head == ["spark-class", "org.apache.spark.deploy.master.Master", "--host",
                          "head", "--port", "7077", "--webui-port", "8080"]
    spark_worker = container_options(spec("spark", worker_cpu=0.4), ROLE_WORKER,
                                     namespace="prod", user="1000", pids_limit=512,
                                     index=1)["command"][2]
    assert ("exec spark-class org.apache.spark.deploy.worker.Worker --cores 1 "
            f"--memory {spark_worker_memory_mb(4096)}M --webui-port 8081 "
            'spark://head:7077 --host "$ip"') in spark_worker


def test_a_cluster_container_is_limited_hardened_and_on_its_network_only() -> None:
    options = container_options(spec(run_id=3), ROLE_WORKER, namespace="prod", user="1000",
                                pids_limit=512, index=2, data_root="/srv/data")
    assert options["name"] == "dockyard-prod-cluster-7-worker-2"
    assert options["hostname"] == "worker-2"
    assert options["network"] == "dockyard-prod-cluster-7"
    assert options["networking_config"] == {"dockyard-prod-cluster-7": {"Aliases": ["worker-2"]}}
    assert (options["mem_limit"], options["memswap_limit"]) == ("4096m", "4096m")
    assert options["nano_cpus"] == 2 * 10**9 and options["pids_limit"] == 512
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert options["init"] is True and options["user"] == "1000"
    assert options["shm_size"] == ray_sizes(4096).shm_bytes
    assert options["volumes"] == {"/srv/data": {"bind": "/dockyard/data", "mode": "rw"}}
    assert options["labels"]["dockyard.run-id"] == "3"
    assert options["environment"]["DOCKYARD_DATA_ROOT"] == "/dockyard/data"
    # Ray's processes fork and exec; grpc's fork handlers crash such a child.
    assert options["environment"]["GRPC_ENABLE_FORK_SUPPORT"] == "false"
    assert "healthcheck" not in options  # only the head probes
    # A worker that failed is restarted a few times; the head never is.
    assert options["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 3}

    head = container_options(spec(), ROLE_HEAD, namespace="prod", user="1000", pids_limit=512)
    assert head["networking_config"] == {"dockyard-prod-cluster-7": {"Aliases": ["head"]}}
    assert (head["hostname"], head["mem_limit"], head["nano_cpus"]) == ("head", "2048m", 10**9)
    assert head["healthcheck"]["Test"][:3] == ["CMD", "python", "-c"]
    assert head["healthcheck"]["Test"][4:] == ["ray", "3", "1"]
    assert "restart_policy" not in head


def test_spark_ui_links_carry_dockyards_public_path() -> None:
    path = "/services/dockyard/clusters/7/dashboard"
    head = container_options(spec("spark", dashboard_path=path), ROLE_HEAD, namespace="p",
                             user="1000", pids_limit=1)["environment"]
    assert head["SPARK_MASTER_OPTS"] == \
        f"-Dspark.ui.reverseProxy=true -Dspark.ui.reverseProxyUrl={path}"
    assert head["SPARK_DAEMON_MEMORY"] == "256m"
    worker = container_options(spec("spark", dashboard_path=path), ROLE_WORKER, namespace="p",
                               user="1000", pids_limit=1, index=1)["environment"]
    assert worker["SPARK_WORKER_OPTS"] == head["SPARK_MASTER_OPTS"]
    plain = container_options(spec("spark"), ROLE_HEAD, namespace="p", user="1000",
                              pids_limit=1)["environment"]
    assert "SPARK_MASTER_OPTS" not in plain
    assert "GRPC_ENABLE_FORK_SUPPORT" not in plain


def test_the_healthcheck_probes_often_while_starting() -> None:
    old = healthcheck("ray", 2)
    assert old["Interval"] == 10**9 and "StartInterval" not in old
    assert old["Retries"] == 30 and old["StartPeriod"] == 600 * 10**9
    new = healthcheck("spark", 2, start_interval=True, gate=False)
    assert (new["Interval"], new["StartInterval"]) == (5 * 10**9, 5 * 10**8)
    assert new["Test"][-3:] == ["spark", "2", "0"]
    assert READY_MARK in PROBE
    compile(PROBE, "<probe>", "exec")


def health(status: str, *outputs: str) -> dict[str, object]:
    return {"Status": "running", "Health": {
        "Status": status, "Log": [{"ExitCode": 0, "Output": o} for o in outputs]}}


def test_the_probe_output_reads_as_workers_busy_and_ready() -> None:
    line = json.dumps({"workers": 2, "busy": True, "dashboard": True, "ready": True})
    report = read_probe(health("healthy", "{}", line + "\n"))
    assert (report.health, report.workers, report.busy, report.dashboard, report.ready) == \
        ("healthy", 2, True, True, True)
    failed = read_probe(health("starting", json.dumps(
        {"workers": 0, "busy": None, "error": "ConnectionRefusedError: refused"})))
    assert (failed.workers, failed.busy, failed.error) == \
        (0, None, "ConnectionRefusedError: refused")
    garbage = read_probe(health("starting", "Traceback...\nOSError: boom\n"))
    assert garbage.error == "OSError: boom" and garbage.busy is None
    assert read_probe({"Status": "running"}).health == ""


def test_the_head_container_decides_the_phase_on_a_docker_engine() -> None:
    def phase(state: dict[str, object]) -> tuple[ClusterPhase, str]:
        return phase_of_head(state, read_probe(state))

    assert phase(health("healthy", '{"workers": 2}'))[0] == ClusterPhase.READY
    assert phase(health("starting", '{"workers": 1}')) == \
        (ClusterPhase.STARTING, "1 worker(s) registered")
    assert phase(health("unhealthy", '{"workers": 0, "error": "timed out"}')) == \
        (ClusterPhase.FAILED, "the head stopped answering: timed out")
    ended = phase({"Status": "exited", "ExitCode": 137, "OOMKilled": True})
    assert ended[0] == ClusterPhase.FAILED and "out of memory" in ended[1]
    assert phase({"Status": "created"})[0] == ClusterPhase.STARTING


def worker(status: str, exit_code: int = 0, restarts: int = 0) -> dict[str, object]:
    return {"State": {"Status": status, "ExitCode": exit_code}, "RestartCount": restarts}


def test_a_starting_cluster_fails_at_once_when_a_worker_will_not_come_back() -> None:
    starting = health("starting", '{"workers": 1}')
    probe = read_probe(starting)
    # A worker the engine restarts (or is about to) keeps the cluster starting.
    assert cluster_phase(starting, probe, {"w-1": worker("running"),
                                           "w-2": worker("restarting", 1, restarts=1)}) == (
        ClusterPhase.STARTING, "1 worker(s) registered; w-2 restarted 1 of 3 times")
    # "exited" is final: its restarts are used up (or it ended well, which on-failure
    # never restarts).
    assert cluster_phase(starting, probe, {"w-1": worker("running"),
                                           "w-2": worker("exited", 1, restarts=3)}) == (
        ClusterPhase.FAILED, "a worker could not start: w-2 ended (exit code 1) after 3 "
                             "restarts")
    assert cluster_phase(starting, probe, {"w-1": worker("exited", 0)})[0] == \
        ClusterPhase.FAILED
    # The head's own end decides first.
    ended = {"Status": "exited", "ExitCode": 127}
    assert cluster_phase(ended, read_probe(ended), {"w-1": worker("running")}) == (
        ClusterPhase.FAILED, "the head ended (exit code 127)")
    # A ready cluster keeps serving with the workers it has; the reason names the lost.
    ready = health("healthy", '{"workers": 1, "ready": true}')
    assert cluster_phase(ready, read_probe(ready), {"w-1": worker("running"),
                                                    "w-2": worker("exited", 137)}) == (
        ClusterPhase.READY, "w-2 ended (killed by SIGKILL)")


def task(state: str, err: str = "", desired: str = "running", slot: int = 1,
         version: int = 1) -> dict[str, object]:
    return {"Status": {"State": state, "Err": err}, "DesiredState": desired, "Slot": slot,
            "Version": {"Index": version}}


def test_a_swarm_restarts_failed_tasks_a_few_times_and_says_when_it_gave_up() -> None:
    for role in (ROLE_HEAD, ROLE_WORKER):
        policy = service_options(spec(), role, namespace="p", user="1000")[
            "task_template"]["RestartPolicy"]
        assert (policy["Condition"], policy["MaxAttempts"], policy["Delay"]) == \
            ("on-failure", 3, 2 * 10**9)
    exit_1 = "task: non-zero exit (1)"
    retried = [task("failed", exit_1, "shutdown", slot=2, version=3),
               task("running", slot=2, version=5), task("running", slot=1, version=4)]
    assert lost_workers(retried) == ""
    # Failed, and the swarm has not (yet) replaced it: not lost.
    assert lost_workers([task("failed", exit_1, "running", slot=1)]) == ""
    given_up = [task("failed", exit_1, "shutdown", slot=2, version=v) for v in (3, 6, 9, 12)]
    assert lost_workers([*given_up, task("running", slot=1)]) == \
        f"worker 2 failed 4 times, last: {exit_1}"
    # A replica removed by a scale down is not a failure.
    assert lost_workers([task("shutdown", desired="remove", slot=3)]) == ""

    current = task("pending", desired="ready", version=9)
    head_tasks = [task("failed", "task: non-zero exit (2)", "shutdown", version=v)
                  for v in (3, 6)] + [current]
    assert earlier_failures(head_tasks, current) == \
        "the head failed 2 times and was restarted, last: task: non-zero exit (2)"
    assert earlier_failures([current], current) == ""


def test_the_head_task_decides_the_phase_on_a_swarm() -> None:
    ready = read_probe(health("healthy", '{"workers": 2, "ready": true}'))
    waiting = read_probe(health("healthy", '{"workers": 1, "ready": false}'))
    assert head_phase(task("running"), ready)[0] == ClusterPhase.READY
    assert head_phase(task("running"), waiting, wanted=2) == \
        (ClusterPhase.STARTING, "1 of 2 worker(s) registered")
    # The head on another node: the running worker tasks stand in for its probe.
    assert head_phase(task("running"), None, workers_running=2, wanted=2)[0] == \
        ClusterPhase.READY
    assert head_phase(task("pending", "no suitable node (insufficient resources on 1 node)"),
                      None) == (ClusterPhase.STARTING,
                                "no suitable node (insufficient resources on 1 node)")
    assert head_phase(task("failed", "task: non-zero exit (1)", desired="shutdown"), None) \
        == (ClusterPhase.FAILED, "the head's task failed: task: non-zero exit (1)")
    assert head_phase(None, None)[0] == ClusterPhase.STARTING


def test_a_swarm_cluster_is_a_dnsrr_head_and_spread_workers_on_the_overlay() -> None:
    head = service_options(spec(), ROLE_HEAD, namespace="prod", user="1000",
                           constraints=["node.labels.big==1"], pids_limit=512)
    template = head["task_template"]
    container = template["ContainerSpec"]
    assert head["name"] == "dockyard-prod-cluster-7-head"
    assert head["endpoint_spec"]["Mode"] == "dnsrr"
    assert head["mode"]["replicated"]["Replicas"] == 1
    assert container["Hostname"] == "head" and container["CapabilityDrop"] == ["ALL"]
    assert container["Labels"]["dockyard.role"] == "swarm-task"
    assert container["Healthcheck"]["Test"][-1] == "0"  # healthy once it serves (DNS)
    assert container["Mounts"][0]["Target"] == "/dev/shm"
    assert [(n["Target"], n["Aliases"]) for n in template["Networks"]] == \
        [("dockyard-prod-cluster-7", ["head"])]
    assert template["Placement"]["Constraints"] == ["node.labels.big==1"]
    resources = template["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 10**9, "MemoryBytes": 2048 * MB, "Pids": 512}
    assert resources["Reservations"]["NanoCPUs"] == 10**9

    workers = service_options(spec("spark"), ROLE_WORKER, namespace="prod", user="1000")
    assert workers["name"] == "dockyard-prod-cluster-7-workers"
    assert workers["mode"]["replicated"]["Replicas"] == 3
    assert workers["task_template"]["Placement"]["Preferences"] == \
        [{"Spread": {"SpreadDescriptor": "node.id"}}]
    assert "Healthcheck" not in workers["task_template"]["ContainerSpec"]
    assert workers["labels"]["dockyard.role"] == "cluster-worker"


def test_a_driver_gets_the_address_and_its_own_name() -> None:
    assert driver_env("ray", 7) == {"RAY_ADDRESS": "ray://head:10001",
                                    "DOCKYARD_CLUSTER_ID": "7", "DOCKYARD_CLUSTER_KIND": "ray"}
    assert driver_env("spark", 7, worker_memory_mb=2048) == {
        "SPARK_MASTER": "spark://head:7077", "SPARK_LOCAL_HOSTNAME": "driver",
        "SPARK_EXECUTOR_MEMORY": f"{spark_worker_memory_mb(2048)}m",
        "DOCKYARD_CLUSTER_ID": "7", "DOCKYARD_CLUSTER_KIND": "spark"}
    with pytest.raises(ValueError):
        driver_env("dask", 7)


def test_the_api_names_the_head_by_its_own_name_and_a_job_by_its_alias() -> None:
    # A notebook server is on the networks of all its user's clusters, each with a
    # "head": the API's address names the head container (Docker) or service (swarm).
    assert cluster_address("ray", head_name("prod", 7)) == \
        "ray://dockyard-prod-cluster-7-head:10001"
    assert cluster_address("spark", head_name("prod", 7)) == \
        "spark://dockyard-prod-cluster-7-head:7077"
    # A job's driver is on its own cluster's network only.
    assert cluster_address("spark") == "spark://head:7077"


def test_a_job_joins_the_networks_it_is_given_with_its_alias() -> None:
    job = JobSpec(run_id=1, attempt=1, owner="alice", image="x", argv=("true",), cpu=1,
                  memory_mb=64, networks=(("dockyard-prod-cluster-7", "driver"),))
    options = job_service_options(job, namespace="prod", user="1000", network="jobs")
    assert [(n["Target"], n["Aliases"]) for n in options["task_template"]["Networks"]] == [
        ("jobs", None), ("dockyard-prod-cluster-7", ["driver"])]


def test_only_docker_and_swarm_pools_host_clusters() -> None:
    assert CLUSTER_BACKENDS == ("docker", "swarm")
    config = BackendConfig("http://127.0.0.1:9/")
    assert build_cluster_backend("ecs", "prod", config) is None
    assert build_cluster_backend("local", "prod", config) is None
