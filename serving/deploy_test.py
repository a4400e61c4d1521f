"""The files that run real TF Serving parse as what TF Serving and Kubernetes
expect, and agree with each other and with `mmfuse serve`."""
import os

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.batching import read_batching_parameters

yaml = pytest.importorskip("yaml")

DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy")
IMAGE = "tensorflow/serving:2.16.1"


def _yaml(*path):
    with open(os.path.join(DEPLOY, *path)) as handle:
        return list(yaml.safe_load_all(handle))


def _flags(arguments):
    return dict(argument[2:].split("=", 1) for argument in arguments)


def test_model_config_serves_the_latest_version_of_mmfuse():
    with open(os.path.join(DEPLOY, "models.config")) as handle:
        config = text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
    [model] = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "mmfuse", "/models/mmfuse", "tensorflow")
    # mmfuse serve names the model after its base directory, as here.
    assert os.path.basename(model.base_path) == model.name
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_config_parses():
    parameters = read_batching_parameters(os.path.join(DEPLOY, "batching.config"))
    assert parameters.num_batch_threads.value >= 1


def test_compose_runs_tf_serving_on_the_mounted_configs():
    [compose] = _yaml("docker-compose.yml")
    service = compose["services"]["tfserving"]
    assert service["image"] == IMAGE
    # Published on this machine only unless BIND_ADDRESS says otherwise.
    bindings = [port.rsplit(":", 2) for port in service["ports"]]
    assert {host for host, _, _ in bindings} == {"${BIND_ADDRESS:-127.0.0.1}"}
    assert {f"{outside}:{inside}" for _, outside, inside in bindings} == {"8500:8500", "8501:8501"}
    assert service["user"].split(":")[0] not in ("0", "root")
    flags = _flags(service["command"])
    # gRPC and REST (what `mmfuse serve --rest-port 8501` stands in for) where they are published.
    assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
    assert flags["enable_batching"] == "true"
    assert int(flags["file_system_poll_wait_seconds"]) > 0
    # source:target:mode, where the source may be ${VARIABLE:?message}.
    mounts = {target: source for source, target, _ in
              (volume.rsplit(":", 2) for volume in service["volumes"])}
    for flag in ("model_config_file", "batching_parameters_file"):
        source = mounts[flags[flag]]
        assert os.path.isfile(os.path.join(DEPLOY, source)), source
    assert "/models/mmfuse" in mounts


def test_kubernetes_deployment_service_and_config_fit_together():
    [kustomization] = _yaml("kustomization.yaml")
    for path in kustomization["resources"] + kustomization["configMapGenerator"][0]["files"]:
        assert os.path.isfile(os.path.join(DEPLOY, path)), path
    [deployment] = _yaml("k8s", "deployment.yaml")
    [service] = _yaml("k8s", "service.yaml")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    assert deployment["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["port"] in port_names and readiness["path"] == "/v1/models/mmfuse"
    assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"]
    flags = _flags(container["args"])
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "grpc": int(flags["port"]), "http": int(flags["rest_api_port"])}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    config_volume = volumes[mounts[os.path.dirname(flags["model_config_file"])]]
    assert config_volume["configMap"]["name"] == kustomization["configMapGenerator"][0]["name"]
    assert "persistentVolumeClaim" in volumes[mounts["/models/mmfuse"]]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_pipeline_image_runs_as_a_user_not_root():
    with open(os.path.join(DEPLOY, "..", "..", "Dockerfile")) as handle:
        users = [line.split()[1] for line in handle if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
