"""The deployment files stay true to the code: every option is configurable where they say."""

from pathlib import Path

import yaml

from jkp.app import JKPManagerApp
from jkp.services.gateway import GatewayClient
from jkp.services.pool import PoolManager
from jkp.services.store import RedisStore
from jkp.traits import env_name

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# Secrets live in the Secret; files (client certificates) are mounted by whoever needs them.
NOT_IN_CONFIGMAP = {
    "JKP_AUTH_TOKEN",
    "JKP_EG_AUTH_TOKEN",
    "JKP_REDIS_PASSWORD",
    "JKP_REDIS_SENTINEL_PASSWORD",
    "JKP_EG_CLIENT_CERT",
    "JKP_EG_CLIENT_KEY",
}


def env_names():
    return {
        env_name(trait)
        for cls in (JKPManagerApp, GatewayClient, RedisStore, PoolManager)
        for trait in cls.class_own_traits(config=True).values()
        if env_name(trait) is not None
    }


def manifests():
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def test_manifests_are_kubernetes_objects():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for name, doc in manifests():
        if name == "kustomization.yaml":
            continue
        assert name in kustomization["resources"], name
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], name


def test_configmap_sets_every_option_and_secret_holds_the_tokens():
    docs = {doc["kind"]: doc for _, doc in manifests()}
    configmap, secret = docs["ConfigMap"]["data"], docs["Secret"]["stringData"]
    assert env_names() - NOT_IN_CONFIGMAP <= set(configmap)
    assert not set(configmap) - env_names(), "the ConfigMap sets variables jkp does not read"
    assert {"JKP_AUTH_TOKEN", "JKP_EG_AUTH_TOKEN"} <= set(secret)
    assert {"JKP_REDIS_PASSWORD", "JKP_REDIS_SENTINEL_PASSWORD"} <= set(secret)
    assert configmap["JKP_REDIS_URL"] == "", "a URL would override JKP_REDIS_HOST/PORT"


def test_redis_keeps_an_append_only_file():
    [redis] = [doc for _, doc in manifests() if doc["kind"] == "StatefulSet"]
    args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args
