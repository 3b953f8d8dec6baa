"""MindIE Service's config.json for a served variant: the seeds' DeepSeek serving on Ascend.

The seeds serve DeepSeek-V3/R1 (W8A8) on two Ascend servers with MindIE, from one config.json
that is the same in every node's container. Their appendix prints the whole file and says
which keys to change: ``ipAddress`` and ``managementIpAddress`` are the master node's address
(the rank table's server_id) and equal; ``httpsEnabled`` false; the two TLS switches off when
no authentication is wanted; ``multiNodesInferEnabled`` true across nodes; ``modelName`` and
``modelWeightPath`` (inside the container); ``maxSeqLen`` is ``maxInputTokenLen`` plus
``maxIterTimes``; ``maxPrefillTokens`` equals ``maxInputTokenLen``; ``maxPrefillBatchSize``
and ``maxPrefillTokens`` bound a prefill batch.

:data:`DOCUMENTED` is that file. :func:`generate` fills it from the graph's config (the same
serve.* keys vLLM takes, plus the ``mindie`` section); :func:`validate` checks a document
against it: every key documented and present, each value of the documented type, and the
rules above. MindIE itself cannot run here (Ascend only); the file is what it would read.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

#: the seeds' config.json (appendix: "config.json文件"), key for key, with its values
DOCUMENTED: dict[str, Any] = {
    "Version": "1.0.0",
    "LogConfig": {
        "logLevel": "Info",
        "logFileSize": 20,
        "logFileNum": 20,
        "logPath": "logs/mindie-server.log",
    },
    "ServerConfig": {
        "ipAddress": "7.242.110.112",
        "managementIpAddress": "7.242.110.112",
        "port": 1025,
        "managementPort": 1026,
        "metricsPort": 1027,
        "allowAllZeroIpListening": False,
        "maxLinkNum": 1000,
        "httpsEnabled": False,
        "fullTextEnabled": False,
        "tlsCaPath": "security/ca/",
        "tlsCaFile": ["ca.pem"],
        "tlsCert": "security/certs/server.pem",
        "tlsPk": "security/keys/server.key.pem",
        "tlsPkPwd": "security/pass/key_pwd.txt",
        "tlsCrlPath": "security/certs/",
        "tlsCrlFiles": ["server_crl.pem"],
        "managementTlsCaFile": ["management_ca.pem"],
        "managementTlsCert": "security/certs/management/server.pem",
        "managementTlsPk": "security/keys/management/server.key.pem",
        "managementTlsPkPwd": "security/pass/management/key_pwd.txt",
        "managementTlsCrlPath": "security/management/certs/",
        "managementTlsCrlFiles": ["server_crl.pem"],
        "kmcKsfMaster": "tools/pmt/master/ksfa",
        "kmcKsfStandby": "tools/pmt/standby/ksfb",
        "inferMode": "standard",
        "interCommTLSEnabled": False,
        "interCommPort": 1121,
        "interCommTlsCaPath": "security/grpc/ca/",
        "interCommTlsCaFiles": ["ca.pem"],
        "interCommTlsCert": "security/grpc/certs/server.pem",
        "interCommPk": "security/grpc/keys/server.key.pem",
        "interCommPkPwd": "security/grpc/pass/key_pwd.txt",
        "interCommTlsCrlPath": "security/grpc/certs/",
        "interCommTlsCrlFiles": ["server_crl.pem"],
        "openAiSupport": "vllm",
    },
    "BackendConfig": {
        "backendName": "mindieservice_llm_engine",
        "modelInstanceNumber": 1,
        "npuDeviceIds": [[0, 1, 2, 3]],
        "tokenizerProcessNumber": 8,
        "multiNodesInferEnabled": True,
        "multiNodesInferPort": 1120,
        "interNodeTLSEnabled": False,
        "interNodeTlsCaPath": "security/grpc/ca/",
        "interNodeTlsCaFiles": ["ca.pem"],
        "interNodeTlsCert": "security/grpc/certs/server.pem",
        "interNodeTlsPk": "security/grpc/keys/server.key.pem",
        "interNodeTlsPkPwd": "security/grpc/pass/mindie_server_key_pwd.txt",
        "interNodeTlsCrlPath": "security/grpc/certs/",
        "interNodeTlsCrlFiles": ["server_crl.pem"],
        "interNodeKmcKsfMaster": "tools/pmt/master/ksfa",
        "interNodeKmcKsfStandby": "tools/pmt/standby/ksfb",
        "ModelDeployConfig": {
            "maxSeqLen": 16384,
            "maxInputTokenLen": 15360,
            "truncation": False,
            "ModelConfig": [
                {
                    "modelInstanceType": "Standard",
                    "modelName": "DeepSeek-V3",
                    "modelWeightPath": "/data/model/DeepSeek-V3-w8a8",
                    "worldSize": 4,
                    "cpuMemSize": 5,
                    "npuMemSize": -1,
                    "backendType": "atb",
                    "trustRemoteCode": False,
                }
            ],
        },
        "ScheduleConfig": {
            "templateType": "Standard",
            "templateName": "Standard_LLM",
            "cacheBlockSize": 128,
            "maxPrefillBatchSize": 50,
            "maxPrefillTokens": 15360,
            "prefillTimeMsPerReq": 150,
            "prefillPolicyType": 0,
            "decodeTimeMsPerReq": 50,
            "decodePolicyType": 0,
            "maxBatchSize": 200,
            "maxIterTimes": 1024,
            "maxPreemptCount": 0,
            "supportSelectBatch": False,
            "maxQueueDelayMicroseconds": 5000,
        },
    },
}

#: the serve.* keys MindIE's file shares with vLLM's flags, and the mindie.* keys (Settings'
#: fields of the same names)
SERVE_KEYS = (
    "max_model_len",
    "max_num_seqs",
    "tensor_parallel_size",
    "block_size",
    "trust_remote_code",
)
KEYS = (
    "nodes",
    "npus_per_node",
    "ip_address",
    "port",
    "management_port",
    "metrics_port",
    "container_work_dir",
    "max_output_tokens",
    "max_prefill_batch_size",
)

#: NPUs on one Ascend server (Snt9B: 8; some have 16)
MAX_NPUS_PER_NODE = 16


@dataclass(frozen=True)
class Settings:
    """What the graph's config says about a MindIE deployment of one served variant."""

    model_dir: str
    model_name: str
    max_model_len: int
    max_num_seqs: int
    tensor_parallel_size: int = 1
    block_size: int | None = None
    trust_remote_code: bool = False
    nodes: int = 1
    npus_per_node: int | None = None
    ip_address: str = "127.0.0.1"
    port: int = 1025
    management_port: int = 1026
    metrics_port: int = 1027
    container_work_dir: str | None = None
    max_output_tokens: int | None = None
    max_prefill_batch_size: int | None = None


def devices_per_node(s: Settings) -> int:
    """NPUs each node's container uses: mindie.npus_per_node, or the tensor-parallel size
    spread evenly over the nodes (MindIE's world is every node's devices)."""
    if s.npus_per_node is not None:
        return s.npus_per_node
    if s.tensor_parallel_size % s.nodes:
        raise UserError(
            f"{s.nodes} nodes do not divide serve.tensor_parallel_size {s.tensor_parallel_size};"
            " set mindie.npus_per_node, or a tensor-parallel size that is a multiple of it",
            field="mindie.nodes",
        )
    return s.tensor_parallel_size // s.nodes


def output_tokens(s: Settings) -> int:
    """maxIterTimes: mindie.max_output_tokens, or a sixteenth of the sequence (the seeds'
    1k of 16k)."""
    return s.max_output_tokens if s.max_output_tokens is not None else max(1, s.max_model_len // 16)


def weight_path(s: Settings) -> str:
    """modelWeightPath as the container sees it: the variant's directory below
    mindie.container_work_dir (the seeds mount the work directory there), else as here."""
    path = Path(s.model_dir).absolute()
    if s.container_work_dir:
        if not path.is_relative_to(Path.cwd()):
            raise UserError(
                f"{s.model_dir} is outside the working directory, which the container mounts;"
                " leave mindie.container_work_dir null to write the path as it is",
                field="mindie.container_work_dir",
            )
        rel = path.relative_to(Path.cwd()).as_posix()
        return f"{s.container_work_dir.rstrip('/')}/{rel}"
    return str(path)


def generate(s: Settings) -> dict[str, Any]:
    """The documented config.json with the keys the seeds change set from ``s``."""
    out_len = output_tokens(s)
    if out_len >= s.max_model_len:
        raise UserError(
            f"{out_len} output tokens leave no input in serve.max_model_len {s.max_model_len};"
            " lower mindie.max_output_tokens",
            field="mindie.max_output_tokens",
        )
    per_node = devices_per_node(s)
    if not 1 <= per_node <= MAX_NPUS_PER_NODE:
        raise UserError(
            f"{per_node} NPUs per node; an Ascend server has 1 to {MAX_NPUS_PER_NODE}",
            field="mindie.npus_per_node",
        )
    in_len = s.max_model_len - out_len
    doc = copy.deepcopy(DOCUMENTED)
    server = doc["ServerConfig"]
    server.update(
        ipAddress=s.ip_address,
        managementIpAddress=s.ip_address,
        port=s.port,
        managementPort=s.management_port,
        metricsPort=s.metrics_port,
        allowAllZeroIpListening=False,
        httpsEnabled=False,
        interCommTLSEnabled=False,
    )
    backend = doc["BackendConfig"]
    backend.update(
        npuDeviceIds=[list(range(per_node))],
        multiNodesInferEnabled=s.nodes > 1,
        interNodeTLSEnabled=False,
    )
    deploy = backend["ModelDeployConfig"]
    deploy.update(maxSeqLen=s.max_model_len, maxInputTokenLen=in_len)
    deploy["ModelConfig"][0].update(
        modelName=s.model_name,
        modelWeightPath=weight_path(s),
        worldSize=per_node,
        trustRemoteCode=s.trust_remote_code,
    )
    prefill_batch = s.max_prefill_batch_size or max(1, s.max_num_seqs // 4)
    backend["ScheduleConfig"].update(
        cacheBlockSize=s.block_size
        or DOCUMENTED["BackendConfig"]["ScheduleConfig"]["cacheBlockSize"],
        maxPrefillBatchSize=min(prefill_batch, s.max_num_seqs),
        maxPrefillTokens=in_len,
        maxBatchSize=s.max_num_seqs,
        maxIterTimes=out_len,
    )
    validate(doc, "<generated>")
    return doc


def _type_name(value: Any) -> str:
    return {
        bool: "true/false",
        int: "an integer",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _same_type(value: Any, documented: Any) -> bool:
    if isinstance(documented, bool) or isinstance(value, bool):
        return type(value) is type(documented)
    return isinstance(value, type(documented))


def _check_keys(doc: Any, documented: Any, where: str, path: str) -> None:
    if not _same_type(doc, documented):
        raise UserError(
            f"{doc!r} is not {_type_name(documented)} (documented: {documented!r})",
            path=path,
            field=where or "<top>",
        )
    if isinstance(documented, dict):
        for key in doc:
            if key not in documented:
                raise UserError(
                    f"not a documented MindIE key; documented here: {', '.join(documented)}",
                    path=path,
                    field=f"{where}.{key}" if where else key,
                )
        for key, value in documented.items():
            field = f"{where}.{key}" if where else key
            if key not in doc:
                raise UserError(
                    f"missing; MindIE reads it (documented: {value!r})", path=path, field=field
                )
            _check_keys(doc[key], value, field, path)
    elif isinstance(documented, list) and documented:
        for i, item in enumerate(doc):
            _check_keys(item, documented[0], f"{where}[{i}]", path)


def validate(doc: dict[str, Any], path: str | Path) -> None:
    """Raise UserError (one line: the file, the key, the fix) where ``doc`` is not a
    config.json MindIE documents: unknown, missing or mistyped keys, or one of the seeds'
    rules broken."""
    _check_keys(doc, DOCUMENTED, "", str(path))
    server = doc["ServerConfig"]
    backend = doc["BackendConfig"]
    deploy, sched = backend["ModelDeployConfig"], backend["ScheduleConfig"]

    def fail(field: str, msg: str) -> None:
        raise UserError(msg, path=str(path), field=field)

    try:
        ip = ipaddress.ip_address(server["ipAddress"])
    except ValueError:
        fail(
            "ServerConfig.ipAddress",
            f"{server['ipAddress']!r} is not an IP address; give the master node's"
            " (the rank table's server_id)",
        )
    if server["managementIpAddress"] != server["ipAddress"]:
        fail(
            "ServerConfig.managementIpAddress",
            f"{server['managementIpAddress']!r} differs from ipAddress {server['ipAddress']!r};"
            " both are the master node's address",
        )
    if ip.is_unspecified and not server["allowAllZeroIpListening"]:
        fail(
            "ServerConfig.ipAddress",
            "listening on every address needs allowAllZeroIpListening true;"
            " give the node's own address instead",
        )
    ports = {
        "ServerConfig.port": server["port"],
        "ServerConfig.managementPort": server["managementPort"],
        "ServerConfig.metricsPort": server["metricsPort"],
        "ServerConfig.interCommPort": server["interCommPort"],
        "BackendConfig.multiNodesInferPort": backend["multiNodesInferPort"],
    }
    seen: dict[int, str] = {}
    for field, port in ports.items():
        if not 1024 <= port <= 65535:
            fail(field, f"port {port} is outside 1024..65535")
        if port in seen:
            fail(field, f"port {port} is also {seen[port]}; give each service its own port")
        seen[port] = field
    devices = backend["npuDeviceIds"]
    if not devices or not all(devices):
        fail(
            "BackendConfig.npuDeviceIds",
            "no NPU listed; give the device ids of each model instance, e.g. [[0,1,2,3,4,5,6,7]]",
        )
    if len(devices) != backend["modelInstanceNumber"]:
        fail(
            "BackendConfig.modelInstanceNumber",
            f"{backend['modelInstanceNumber']} instances but npuDeviceIds lists {len(devices)};"
            " one device list per instance",
        )
    for i, model in enumerate(deploy["ModelConfig"]):
        if model["worldSize"] != len(devices[0]):
            fail(
                f"BackendConfig.ModelDeployConfig.ModelConfig[{i}].worldSize",
                f"{model['worldSize']} but each instance has {len(devices[0])} NPUs (npuDeviceIds);"
                " make them equal",
            )
        for key in ("modelName", "modelWeightPath"):
            if not model[key].strip():
                fail(
                    f"BackendConfig.ModelDeployConfig.ModelConfig[{i}].{key}",
                    "empty; name the model and its weights' directory in the container",
                )
    if deploy["maxSeqLen"] != deploy["maxInputTokenLen"] + sched["maxIterTimes"]:
        fail(
            "BackendConfig.ModelDeployConfig.maxSeqLen",
            f"{deploy['maxSeqLen']} is not maxInputTokenLen {deploy['maxInputTokenLen']}"
            f" + maxIterTimes {sched['maxIterTimes']}; make it their sum",
        )
    if sched["maxPrefillTokens"] != deploy["maxInputTokenLen"]:
        fail(
            "BackendConfig.ScheduleConfig.maxPrefillTokens",
            f"{sched['maxPrefillTokens']} differs from maxInputTokenLen"
            f" {deploy['maxInputTokenLen']}; keep them the same",
        )
    if sched["maxPrefillBatchSize"] > sched["maxBatchSize"]:
        fail(
            "BackendConfig.ScheduleConfig.maxPrefillBatchSize",
            f"{sched['maxPrefillBatchSize']} is above maxBatchSize {sched['maxBatchSize']};"
            " lower it",
        )
    for key in ("maxSeqLen", "maxInputTokenLen"):
        if deploy[key] < 1:
            fail(f"BackendConfig.ModelDeployConfig.{key}", f"{deploy[key]} must be positive")
    for key in ("cacheBlockSize", "maxPrefillBatchSize", "maxBatchSize", "maxIterTimes"):
        if sched[key] < 1:
            fail(f"BackendConfig.ScheduleConfig.{key}", f"{sched[key]} must be positive")
