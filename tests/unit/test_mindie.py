"""MindIE Service's config.json: generated from the config, checked against the seeds' file."""

from __future__ import annotations

import copy
import json

import pytest

from llmbuild.cli import main
from llmbuild.errors import UserError
from llmbuild.serve import mindie

pytestmark = pytest.mark.unit


def settings(**kw) -> mindie.Settings:
    base = dict(model_dir="results/m/sft/quant/w8a8", model_name="DeepSeek-V3", max_model_len=16384)
    return mindie.Settings(**{**base, "max_num_seqs": 200, **kw})


def test_the_seeds_own_file_passes():
    mindie.validate(copy.deepcopy(mindie.DOCUMENTED), "seed.json")


def test_two_nodes_of_eight_npus_as_the_seeds_deploy_deepseek():
    doc = mindie.generate(
        settings(
            nodes=2,
            tensor_parallel_size=16,
            ip_address="7.242.110.112",
            container_work_dir="/data/work",
        )
    )
    server, backend = doc["ServerConfig"], doc["BackendConfig"]
    assert server["ipAddress"] == server["managementIpAddress"] == "7.242.110.112"
    assert server["httpsEnabled"] is False and server["interCommTLSEnabled"] is False
    assert backend["multiNodesInferEnabled"] is True and backend["interNodeTLSEnabled"] is False
    assert backend["npuDeviceIds"] == [list(range(8))]
    deploy, sched = backend["ModelDeployConfig"], backend["ScheduleConfig"]
    model = deploy["ModelConfig"][0]
    assert model["worldSize"] == 8 and model["modelName"] == "DeepSeek-V3"
    assert model["modelWeightPath"] == "/data/work/results/m/sft/quant/w8a8"
    # the seeds' 16k = 15k input + 1k output, prefill tokens = input length, 50 of 200
    assert (deploy["maxSeqLen"], deploy["maxInputTokenLen"], sched["maxIterTimes"]) == (
        16384,
        15360,
        1024,
    )
    assert sched["maxPrefillTokens"] == 15360
    assert (sched["maxPrefillBatchSize"], sched["maxBatchSize"]) == (50, 200)
    assert sched["cacheBlockSize"] == 128


def test_defaults_listen_on_this_host_on_one_node():
    doc = mindie.generate(settings(max_model_len=512, max_num_seqs=16, block_size=32))
    assert doc["ServerConfig"]["ipAddress"] == "127.0.0.1"
    assert doc["ServerConfig"]["allowAllZeroIpListening"] is False
    assert doc["BackendConfig"]["multiNodesInferEnabled"] is False
    assert doc["BackendConfig"]["npuDeviceIds"] == [[0]]
    assert doc["BackendConfig"]["ScheduleConfig"]["cacheBlockSize"] == 32
    assert doc["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0][
        "modelWeightPath"
    ].startswith("/")


def broken(change) -> dict:
    doc = copy.deepcopy(mindie.DOCUMENTED)
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            lambda d: d["ServerConfig"].update(ipAdress="1.2.3.4"),
            "ServerConfig.ipAdress",
            "not a documented",
        ),
        (lambda d: d["ServerConfig"].pop("port"), "ServerConfig.port", "missing"),
        (lambda d: d["ServerConfig"].update(port="1025"), "ServerConfig.port", "not an integer"),
        (
            lambda d: d["ServerConfig"].update(httpsEnabled=0),
            "ServerConfig.httpsEnabled",
            "true/false",
        ),
        (
            lambda d: d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0].update(worldSize=8),
            "BackendConfig.ModelDeployConfig.ModelConfig[0].worldSize",
            "make them equal",
        ),
        (
            lambda d: d["BackendConfig"]["ModelDeployConfig"].update(maxSeqLen=16000),
            "BackendConfig.ModelDeployConfig.maxSeqLen",
            "make it their sum",
        ),
        (
            lambda d: d["BackendConfig"]["ScheduleConfig"].update(maxPrefillTokens=8192),
            "BackendConfig.ScheduleConfig.maxPrefillTokens",
            "keep them the same",
        ),
        (
            lambda d: d["ServerConfig"].update(managementIpAddress="7.242.110.113"),
            "ServerConfig.managementIpAddress",
            "master node",
        ),
        (
            lambda d: d["ServerConfig"].update(metricsPort=1025),
            "ServerConfig.metricsPort",
            "its own port",
        ),
        (
            lambda d: d["ServerConfig"].update(ipAddress="0.0.0.0", managementIpAddress="0.0.0.0"),
            "ServerConfig.ipAddress",
            "allowAllZeroIpListening",
        ),
        (
            lambda d: d["BackendConfig"]["ScheduleConfig"].update(maxPrefillBatchSize=500),
            "BackendConfig.ScheduleConfig.maxPrefillBatchSize",
            "above maxBatchSize",
        ),
    ],
)
def test_each_broken_rule_is_one_line_naming_the_key(change, field, words):
    with pytest.raises(UserError) as err:
        mindie.validate(broken(change), "config.json")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"config.json: {field}: ") and words in msg, msg


def test_settings_it_cannot_write_are_refused():
    with pytest.raises(UserError, match=r"mindie.nodes: 3 nodes do not divide"):
        mindie.generate(settings(nodes=3, tensor_parallel_size=16))
    with pytest.raises(UserError, match=r"mindie.max_output_tokens: 600 output tokens"):
        mindie.generate(settings(max_model_len=512, max_output_tokens=600))
    with pytest.raises(UserError, match=r"mindie.npus_per_node: 32 NPUs per node"):
        mindie.generate(settings(nodes=1, tensor_parallel_size=32))


def test_cli_writes_a_file_that_checks_and_refuses_a_broken_one(tmp_path, capsys):
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    out = tmp_path / "mindie" / "config.json"
    argv = [
        "mindie",
        "config",
        "--model-dir",
        str(model),
        "--output",
        str(out),
        "--model-name",
        "tiny",
    ]
    assert main(argv) == 0
    assert main(["mindie", "check", str(out)]) == 0
    assert (tmp_path / "mindie" / "config.json.provenance.json").is_file()
    doc = json.loads(out.read_text())
    doc["BackendConfig"]["ScheduleConfig"]["maxIterTimes"] += 1
    out.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["mindie", "check", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "BackendConfig.ModelDeployConfig.maxSeqLen" in err, err
    # a sequence longer than the model's positions: refused, nothing written
    longer = tmp_path / "long.json"
    assert main([*argv[:5], str(longer), *argv[6:], "--max-model-len", "1024"]) == 2
    assert "serve.max_model_len: 1024 is above the model's 512" in capsys.readouterr().err
    assert not longer.exists()
