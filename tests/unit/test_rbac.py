"""The ClusterRole grants exactly what the operator uses: nothing missing, nothing extra."""

from __future__ import annotations

from pathlib import Path

import yaml

from modeldeploy import access, api, render
from modeldeploy.settings import Settings

from .conftest import ROOT, make_body

READ_WATCH = {"get", "list", "watch"}
WATCH = {"list", "watch"}


def granted() -> dict[tuple[str, str], set[str]]:
    docs = list(yaml.safe_load_all(Path(ROOT / "manifests" / "base" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def used() -> dict[tuple[str, str], set[str]]:
    """Derived from the code: what render_children can emit or delete, and what kube/kopf call."""
    out: dict[tuple[str, str], set[str]] = {
        # kopf's watch (the parents' cache serves child events); get: a full resync's fresh copy
        (api.GROUP, api.PLURAL): READ_WATCH | {"patch"},  # Kube.remove_annotation (canary)
        (api.GROUP, f"{api.PLURAL}/status"): {"patch"},  # Kube.apply_status
        (api.GROUP, f"{api.PLURAL}/finalizers"): {"update"},  # blockOwnerDeletion
        ("", "pods"): {"list"},  # Kube.list_pods
        ("", "events"): {"create"},  # Kube.post_event
    }
    # Every kind a spec can render is created (create), applied (patch), read by a full pass
    # (get), watched (list, watch) and deleted again when a pass that created it finds another
    # of its names taken (delete); kinds that can become unwanted are read, then deleted.
    everything = api.parse_spec(
        {
            "model": {"uri": "file:///m"},
            "autoscaling": {"maxReplicas": 3},
            "auth": {"mode": "Kubernetes"},
        }
    )
    nothing = api.parse_spec({"model": {"uri": "file:///m"}, "networkPolicy": {"enabled": False}})
    for spec in (everything, nothing):
        children = render.render_children(render.Owner.from_body(make_body({})), spec, _settings())
        for obj in children.wanted:
            group = obj["apiVersion"].rpartition("/")[0]
            # Server-side apply is a PATCH, and the API server also checks create when it
            # creates the object.
            out.setdefault((group, render.child_kind(obj["kind"]).plural), set()).update(
                WATCH | {"get", "create", "patch", "delete"}
            )
        for kind in children.unwanted:
            group = kind.api_version.rpartition("/")[0]
            out.setdefault((group, kind.plural), set()).update(WATCH | {"get", "delete"})
    # A canary runs in a second Deployment, deleted once it is promoted or rolled back.
    out[("apps", render.DEPLOYMENT.plural)].add("delete")
    return out


def _settings() -> Settings:
    return Settings()


def test_cluster_role_grants_exactly_the_verbs_used() -> None:
    assert granted() == used()


def test_watched_child_kinds_are_all_granted() -> None:
    grants = granted()
    for kind in render.CHILD_KINDS:
        group = kind.api_version.rpartition("/")[0]
        assert grants[(group, kind.plural)] >= WATCH, kind.kind


def test_no_wildcards_and_no_secrets() -> None:
    for (group, resource), verbs in granted().items():
        assert "*" not in verbs
        assert "*" not in resource
        assert "*" not in group
        assert resource != "secrets", "credentials are read by the kubelet, never by the operator"


def test_the_lease_role_is_namespaced_and_limited_to_the_operators_lease() -> None:
    docs = list(yaml.safe_load_all(Path(ROOT / "manifests" / "base" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    settings = Settings()
    assert role["metadata"]["namespace"] == settings.lease_namespace
    rules = {frozenset(rule["verbs"]): rule for rule in role["rules"]}
    assert set(rules) == {frozenset({"create"}), frozenset({"get", "update"})}
    assert rules[frozenset({"get", "update"})]["resourceNames"] == [settings.lease_name]
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"]
        assert rule["resources"] == ["leases"]


def test_the_namespaced_install_grants_the_same_rules_in_each_watched_namespace_only() -> None:
    docs = list(
        yaml.safe_load_all(
            Path(ROOT / "manifests" / "namespaced" / "watched-namespace.yaml").read_text()
        )
    )
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    cluster = list(yaml.safe_load_all(Path(ROOT / "manifests" / "base" / "rbac.yaml").read_text()))
    (cluster_role,) = [d for d in cluster if d["kind"] == "ClusterRole"]
    assert role["rules"] == cluster_role["rules"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    overlay = (ROOT / "manifests" / "namespaced" / "kustomization.yaml").read_text()
    assert "kind: ClusterRole\n" in overlay
    assert "kind: ClusterRoleBinding" in overlay
    assert overlay.count("$patch: delete") == 5  # also rbac-auth.yaml's three objects


def _auth_docs() -> dict[str, dict[str, object]]:
    docs = yaml.safe_load_all(Path(ROOT / "manifests" / "base" / "rbac-auth.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_model_pods_may_only_review_tokens_and_access() -> None:
    role = _auth_docs()[f"ClusterRole/{access.TOKEN_REVIEWER_ROLE}"]
    assert role["rules"] == [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    binding = render.render_reviewer_binding(render.Owner.from_body(make_body({})))
    assert binding["roleRef"]["name"] == access.TOKEN_REVIEWER_ROLE
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"


def test_operator_may_bind_the_reviewer_role_and_nothing_else() -> None:
    docs = _auth_docs()
    rules = docs["ClusterRole/modeldeploy-operator-auth"]["rules"]
    assert isinstance(rules, list)
    by_resource = {rule["resources"][0]: rule for rule in rules}
    assert set(by_resource) == {"clusterrolebindings", "clusterroles"}
    # Server-side apply (patch, create when absent), delete when auth is turned off, and list
    # for the resync that deletes the bindings of resources deleted while no operator ran.
    assert by_resource["clusterrolebindings"]["verbs"] == ["create", "patch", "delete", "list"]
    assert by_resource["clusterroles"]["verbs"] == ["bind"]
    assert by_resource["clusterroles"]["resourceNames"] == [access.TOKEN_REVIEWER_ROLE]
    binding = docs["ClusterRoleBinding/modeldeploy-operator-auth"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "modeldeploy-operator-auth",
    }


def _binding(namespace: str, name: str) -> dict[str, object]:
    owner = render.Owner(name=name, namespace=namespace, uid="u")
    return {**render.render_reviewer_binding(owner), "metadata": {"name": f"{namespace}.{name}"}}


def test_only_bindings_no_live_resource_wants_are_orphans() -> None:
    """The resync deletes the token-review bindings of resources deleted while no operator ran;
    never another role's binding, nor one of a namespace another install watches."""
    someone_elses = {**_binding("a", "x"), "roleRef": {"name": "cluster-admin"}}
    bindings = [_binding("a", "live"), _binding("a", "gone"), _binding("b", "gone"), someone_elses]
    orphans = access.orphaned_bindings(bindings, {("a", "live")}, ())
    assert [b["metadata"]["name"] for b in orphans] == ["a.gone", "b.gone"]
    watched = access.orphaned_bindings(bindings, {("a", "live")}, ("a",))
    assert [b["metadata"]["name"] for b in watched] == ["a.gone"]
