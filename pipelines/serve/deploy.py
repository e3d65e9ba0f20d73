"""Putting the app on Ray Serve: build it, run it, reload it, and the builder for Serve config
files (KubeRay's RayService).

    deploy(spec, uri=..., home=...)     serve.run: the gateway plus one ModelServer per model
    reload(home=...)                    resolve every served alias again; swap in new versions
    app_builder(args)                   import_path: genray.pipelines.serve:app_builder

`deploy` writes each model's version to its registry tag (registry.serving_tag) and runs the app
with serve.run; the replicas follow the tag. `reload` resolves the aliases again, moves the tags,
and waits until every replica answers with its new version: the replicas swap in place, in the
same processes, with no serve.run (which would replace them all: docs/ARCHITECTURE.md, Serving). So
serve.run runs only when what is deployed changes (the models, the deployment options); a version
change is a tag change. Serve config files (app_builder) use no tag: there a re-applied config
with only `deployments[].user_config` changed swaps in place.
"""
from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from genray.pipelines import tracking
from genray.pipelines.config import ConfigError
from genray.pipelines.env import project_home
from genray.pipelines.serve.auth import key_check
from genray.pipelines.serve.gateway import Gateway
from genray.pipelines.serve.registry import check_versions, resolve_versions, serving_tag, set_serving_versions
from genray.pipelines.serve.replica import ModelServerDeployment
from genray.pipelines.serve.spec import DEFAULT_APP, ServeSpec


def deployment_name(model_name: str) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", model_name)


def build_app(spec: ServeSpec, uri: str, home: Path, versions: dict[str, str], *, version_tag: str | None = None):
    """The gateway bound to one ModelServer per model, each told its version by user_config and,
    with `version_tag`, following that registry tag (every deployment.version_poll_period_s).
    With spec.api_key_file or api_key_env, the key is read here and the gateway gets only its
    salted hash (serve/auth.py)."""
    check = key_check(spec)  # first: a bad key file is a UserError before anything is bound
    d = spec.deployment
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        # Room for a full batch queued while one runs (RAY_NOTES: keep it >= max_batch_size).
        "max_ongoing_requests": d.max_ongoing_requests or max(2 * d.max_batch_size, 8),
        "health_check_period_s": d.health_check_period_s,
        # A replica being replaced (a redeploy) finishes what it holds: no request is cut short
        # before its own time limit (Serve's default kills a replica after 20 s).
        "graceful_shutdown_timeout_s": spec.limits.request_timeout_s + 5,
        # The gateway logs every HTTP request; a second line per request from the model's replica
        # costs CPU that batching would rather spend on the forward pass.
        "logging_config": {"enable_access_log": False},
    }
    if d.autoscaling is not None:
        options["autoscaling_config"] = d.autoscaling.model_dump()
    else:
        options["num_replicas"] = d.num_replicas
    batching = {"max_batch_size": d.max_batch_size, "batch_wait_timeout_s": d.batch_wait_timeout_s}
    limits = spec.limits.model_dump()
    servers = {
        name: ModelServerDeployment.options(
            name=deployment_name(name), user_config={"version": version}, **options,
        ).bind(name, uri, str(home), limits, batching, version_tag=version_tag,
               poll_period_s=d.version_poll_period_s)
        for name, version in versions.items()
    }
    # The gateway only parses, checks and forwards: Serve's default of 5 requests in flight per
    # replica would cap every model's batches at 5. It takes no CPU, so on a redeploy a
    # replacement can start before the old replica stops (max_surge_percent) and HTTP always
    # finds a gateway.
    return Gateway.options(
        max_ongoing_requests=d.gateway_max_ongoing_requests, max_surge_percent=100,
        graceful_shutdown_timeout_s=spec.limits.request_timeout_s + 5,
    ).bind(servers, limits, key_check=check)


# ------------------------------------------------------------------------------- deploy and reload


def state_file(home: Path, app_name: str) -> Path:
    return home / "serve" / f"{app_name}.json"


@dataclass
class Deployed:
    url: str
    versions: dict[str, str]
    spec: ServeSpec


def deploy(spec: ServeSpec, *, uri: str, home: Path, versions: dict[str, str] | None = None,
           checked: bool = False) -> Deployed:
    """Start Serve's HTTP proxy on spec.host:spec.port and run the app. Ray must be initialised.
    `checked=True`: the caller ran check_versions on `versions` already. Writes what was deployed
    to <home>/serve/<app>.json, which --reload reads."""
    versions = versions or resolve_versions(uri, spec.models, spec.alias)
    if not checked:
        check_versions(uri, home, versions)
    # Before serve.run: a replica reads the tag when it starts, and a tag left by an earlier
    # session of this app must not win over what is deployed now.
    tag = serving_tag(spec.app_name)
    set_serving_versions(uri, tag, versions)
    serve.start(http_options={"host": spec.host, "port": spec.port})
    serve.run(build_app(spec, uri, home, versions, version_tag=tag), name=spec.app_name, route_prefix="/",
              blocking=False)
    path = state_file(home, spec.app_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec.model_dump(), "uri": uri, "versions": versions}, indent=2))
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "::") else spec.host
    return Deployed(f"http://{host}:{spec.port}", versions, spec)


def reload(*, home: Path, app_name: str = DEFAULT_APP) -> dict[str, tuple[str, str]]:
    """Resolve every served model's alias again, point the app's registry tags at the versions
    they name now, and wait (up to limits.request_timeout_s) until every replica of a changed
    model serves its new version; the replicas swap in place. Returns {name: (old version, new
    version)}."""
    path = state_file(home, app_name)
    if not path.is_file():
        raise ConfigError(f"nothing to reload: {path} does not exist (is `genray serve` running with this GENRAY_HOME?)")
    saved = json.loads(path.read_text())
    spec = ServeSpec.model_validate(saved["spec"])
    if spec.app_name not in serve.status().applications:
        raise ConfigError(f"nothing to reload: this Ray cluster serves no app {spec.app_name!r} "
                          "(was `genray serve` stopped? is it on another cluster? pass --address)")
    old = saved["versions"]
    new = resolve_versions(saved["uri"], list(old), spec.alias)
    changed = {k: v for k, v in new.items() if v != old.get(k)}
    check_versions(saved["uri"], home, changed)
    set_serving_versions(saved["uri"], serving_tag(spec.app_name), new)
    path.write_text(json.dumps({**saved, "versions": new}, indent=2))
    late = wait_for_versions(spec.app_name, changed, timeout_s=spec.limits.request_timeout_s)
    for name, served in late.items():
        print(f"genray serve --reload: {name}: after {spec.limits.request_timeout_s:g} s its replicas serve "
              f"{', '.join(sorted(served)) or 'no answer'} rather than version {new[name]}; they keep trying "
              f"every {spec.deployment.version_poll_period_s:g} s (their Serve logs say why)", file=sys.stderr)
    return {name: (old.get(name, "-"), new[name]) for name in new}


def wait_for_versions(app_name: str, versions: dict[str, str], *, timeout_s: float) -> dict[str, set[str]]:
    """Ask every running replica of each model in `versions` which version it serves until all
    answer with that one, for at most timeout_s. Returns {name: what its replicas answered last}
    for the models that did not get there (empty: all did)."""
    deadline = time.monotonic() + timeout_s
    handles = {name: serve.get_deployment_handle(deployment_name(name), app_name=app_name) for name in versions}
    pending: dict[str, set[str]] = {name: set() for name in versions}
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            # broadcast: the same call to every running replica (Serve's public DeploymentHandle
            # API), where .remote() would reach one replica of the router's choosing.
            try:
                answers = handles[name].broadcast("stats").results(
                    timeout_s=max(deadline - time.monotonic(), 1.0), return_exceptions=True)
            except TimeoutError:
                continue
            served = {a["version"] if isinstance(a, dict) else f"no answer ({type(a).__name__})" for a in answers}
            if served == {versions[name]}:
                del pending[name]
            else:
                pending[name] = served
        if pending:
            time.sleep(0.2)
    return pending


def app_builder(args: dict[str, Any]):
    """The app for Serve's config files (`serve run`, `serve deploy`, KubeRay's RayService):

        import_path: genray.pipelines.serve:app_builder
        args: {models: [vae-digits], alias: champion, deployment: {...}, limits: {...},
               api_key_env: GENRAY_API_KEY}

    The registry is MLFLOW_TRACKING_URI (else GENRAY_HOME's SQLite store); aliases are resolved
    when the app is built, which Serve does again only when import_path or args change (and then
    it replaces the replicas). To swap a version in place, re-apply the config with
    `deployments: [{name: model-NAME, user_config: {version: "N"}}]`: Serve calls the running
    replicas' `reconfigure`. The API key (api_key_file or api_key_env) is read where Serve builds
    the app, a task on any node of the cluster: give every node the file or the variable."""

    spec = ServeSpec.model_validate({k: v for k, v in (args or {}).items() if k not in ("host", "port")})
    home = project_home()
    uri = tracking.tracking_uri(home)
    return build_app(spec, uri, home, resolve_versions(uri, spec.models, spec.alias))


# ---------------------------------------------------------------------------------- for the console


def wait_until_ready(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)


def curl_example(url: str, info: dict[str, Any] | None, spec: ServeSpec | None = None) -> str:
    """A request to try. With a keyed `spec`, the header reads the key from where the spec says
    (the shell expands it; the key itself is never printed)."""
    name = info["name"] if info else "MODEL"
    key = ""
    if spec is not None and spec.api_key_file is not None:
        key = f"-H \"Authorization: Bearer $(cat {shlex.quote(spec.api_key_file)})\" "
    elif spec is not None and spec.api_key_env is not None:
        key = f"-H \"Authorization: Bearer ${spec.api_key_env}\" "
    return (f"curl -s -X POST {url}/v1/models/{name}/sample {key}-H 'Content-Type: application/json' "
            f"-H 'Accept: image/png' -d '{{\"n\": 16, \"seed\": 0}}' -o samples.png")
