"""Pools as the admin writes them (JSON or TOML), the mistakes named with the pool, who
may use which pool, and image references as each pool sees them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockyard.jobs.pools import PoolPolicy, image_in_pool
from dockyard.settings import SettingsError, load_settings
from dockyard.settings.job_pools import DEFAULT_POOL, JobPoolConfig
from dockyard.web.auth import User

FARGATE = {"backend": "ecs", "cluster": "batch", "subnets": ["subnet-1"],
           "security_groups": ["sg-1"], "execution_role_arn": "arn:aws:iam::1:role/exec",
           "log_group": "/dockyard/jobs"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("DOCKYARD_HOME", str(tmp_path))


def test_pools_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps(
        {"swarm": {"backend": "swarm", "constraints": ["node.labels.jobs==true"]},
         "ecs-fargate": {**FARGATE, "users": ["alice"]}}))
    pools = load_settings().job_pools
    assert list(pools) == ["swarm", "ecs-fargate"]
    assert pools["swarm"].constraints == ["node.labels.jobs==true"]
    assert pools["ecs-fargate"].on_fargate and pools["ecs-fargate"].users == ["alice"]


def test_pools_from_toml_tables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "dockyard.toml"
    config.write_text('[job_pools.ecs-ec2]\nbackend = "ecs"\ncluster = "gpu"\n'
                      'launch_type = "EC2"\nlog_group = "/jobs"\n'
                      'image_prefix = "1234.dkr.ecr.eu-west-1.amazonaws.com"\n')
    monkeypatch.setenv("DOCKYARD_CONFIG", str(config))
    pool = load_settings().job_pools["ecs-ec2"]
    assert (pool.cluster, pool.launch_type, pool.on_fargate) == ("gpu", "EC2", False)


@pytest.mark.parametrize(("pools", "message"), [
    ({"Bad Name": {"backend": "swarm"}}, "pool name 'Bad Name'"),
    ({"s": {"backend": "nomad"}}, "pool 's': backend: Input should be"),
    ({"s": {"backend": "swarm", "cluster": "x"}}, "pool 's': not an option of a swarm pool: "
                                                  "cluster"),
    ({"d": {"backend": "docker", "subnets": ["a"]}}, "not an option of a docker pool: subnets"),
    ({"e": {"backend": "ecs"}}, "pool 'e': an ecs pool needs cluster, log_group, subnets, "
                                "execution_role_arn"),
    ({"e": {**FARGATE, "run_as_user": "0:0"}}, "pool 'e': run_as_user: jobs never run as root"),
    ({"e": {**FARGATE, "surprise": 1}}, "pool 'e': surprise: Extra inputs are not permitted"),
    # Credentials come from the standard AWS chain only: no pool option can hold them.
    ({"e": {**FARGATE, "aws_secret_access_key": "x"}}, "aws_secret_access_key: Extra inputs"),
])
def test_a_wrong_pool_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch, pools: dict,
                                           message: str) -> None:
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps(pools))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("DOCKYARD_JOB_POOLS:")
    assert message in str(caught.value)


def test_poll_intervals_suit_each_engine() -> None:
    assert JobPoolConfig(backend="swarm").poll_interval == 0.5
    assert JobPoolConfig(**FARGATE).poll_interval == 2.0
    assert JobPoolConfig(**FARGATE, poll_seconds=5).poll_interval == 5


def test_ec2_pools_need_no_subnets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps(
        {"e": {"backend": "ecs", "cluster": "c", "log_group": "g", "launch_type": "EC2"}}))
    assert not load_settings().job_pools["e"].on_fargate


def test_default_is_always_there_and_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps({"swarm": {"backend": "swarm"}}))
    policy = PoolPolicy.from_settings(load_settings())
    assert policy.names == [DEFAULT_POOL, "swarm"]
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps(
        {"swarm": {"backend": "swarm"}, "default": {"backend": "swarm",
                                                    "description": "our swarm"}}))
    policy = PoolPolicy.from_settings(load_settings())
    assert policy.names == [DEFAULT_POOL, "swarm"]
    assert policy.pools[0].description == "our swarm"


def test_allow_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps(
        {"swarm": {"backend": "swarm"}, "ecs": {**FARGATE, "users": ["alice"]}}))
    policy = PoolPolicy.from_settings(load_settings())
    alice, bob, admin = User("alice"), User("bob"), User("root", admin=True)
    assert [p.name for p in policy.usable_by(alice)] == ["default", "swarm", "ecs"]
    assert [p.name for p in policy.usable_by(bob)] == ["default", "swarm"]
    assert [p.name for p in policy.usable_by(admin)] == ["default", "swarm", "ecs"]
    assert policy.problem("ecs", alice) is None
    assert policy.problem("ecs", bob) == "you may not use pool 'ecs'; your pools: default, swarm"
    assert policy.problem("gpu", bob) == "unknown pool 'gpu'; choose one of: default, swarm"


@pytest.mark.parametrize(("image", "expected"), [
    ("dockyard/test:latest", "123.dkr.ecr.eu-west-1.amazonaws.com/dockyard/test:latest"),
    ("debian:bookworm-slim", "123.dkr.ecr.eu-west-1.amazonaws.com/debian:bookworm-slim"),
    ("123.dkr.ecr.eu-west-1.amazonaws.com/team/x:1",
     "123.dkr.ecr.eu-west-1.amazonaws.com/team/x:1"),
    ("team/special:2", "public.ecr.aws/team/special:2"),
])
def test_images_are_translated_per_pool(image: str, expected: str) -> None:
    pool = JobPoolConfig(**{**FARGATE, "image_prefix": "123.dkr.ecr.eu-west-1.amazonaws.com",
                            "images": {"team/special:2": "public.ecr.aws/team/special:2"}})
    assert image_in_pool(pool, image) == expected


def test_pools_without_a_prefix_keep_the_reference() -> None:
    assert image_in_pool(None, "dockyard/test:latest") == "dockyard/test:latest"
    assert image_in_pool(JobPoolConfig(backend="swarm"), "a/b:1") == "a/b:1"


def test_a_docker_or_swarm_pool_makes_the_web_service_listen_where_containers_reach_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.containers import web_bind_address

    monkeypatch.setenv("DOCKYARD_HUB_CONNECT_IP", "10.9.8.7")
    assert web_bind_address(load_settings(), "local", "local") == "127.0.0.1"
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps({"swarm": {"backend": "swarm"}}))
    assert web_bind_address(load_settings(), "local", "local") == "10.9.8.7"
    monkeypatch.setenv("DOCKYARD_JOB_POOLS", json.dumps({"ecs": FARGATE}))
    assert web_bind_address(load_settings(), "local", "local") == "127.0.0.1"
