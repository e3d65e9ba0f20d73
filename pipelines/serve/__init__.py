"""`genray serve`: the registered champions over HTTP, with Ray Serve.

    genray serve [--model NAME ...] [--alias champion] [--host 127.0.0.1] [--port 8000]
                 [--config FILE] [--address ADDR] [--api-key-file FILE]
    genray serve --reload [--address auto]     re-read every served alias; swap in new versions,
                                               in place (same replicas), no request failed

One module per concern, in the order a request meets them:

    spec.py      ServeSpec: replicas, batching, limits; the serve config file
    registry.py  alias -> version -> the model rebuilt from safetensors (nothing unpickled);
                 the tag that names the version an app serves
    schemas.py   request and response bodies; a model's sample request from its settings schema
    auth.py      the API key (--api-key-file): read and checked once, a salted hash on the gateway
    gateway.py   the FastAPI ingress: routes, error statuses, the body-size limit, the key check
    replica.py   ModelServer, one per model: batched sampling; follows its registry tag and
                 swaps versions in place
    deploy.py    build the app, serve.run, reload (moves the tags, waits for every replica);
                 app_builder for Serve config files

Serve routes on what a model declares (capabilities, conditioning, sampling_settings,
sampling_cost: components/models/protocol.py), never on its family. The names below are the
package's API for the CLI, the demo, the benchmarks and Serve config files
(`import_path: genray.pipelines.serve:app_builder`).
"""
from genray.pipelines.serve.auth import KeyCheck, key_check
from genray.pipelines.serve.deploy import (
    Deployed,
    app_builder,
    build_app,
    curl_example,
    deploy,
    deployment_name,
    reload,
    state_file,
    wait_until_ready,
)
from genray.pipelines.serve.gateway import VERSION_HEADER
from genray.pipelines.serve.registry import Loaded, check_versions, load_version, resolve_versions, serving_tag
from genray.pipelines.serve.replica import describe, sample_batch
from genray.pipelines.serve.spec import DEFAULT_APP, Limits, ServeSpec, load_spec

__all__ = [
    "DEFAULT_APP", "Deployed", "KeyCheck", "Limits", "Loaded", "ServeSpec", "VERSION_HEADER", "app_builder",
    "build_app", "check_versions", "curl_example", "deploy", "deployment_name", "describe", "key_check", "load_spec",
    "load_version", "reload", "resolve_versions", "sample_batch", "serving_tag", "state_file", "wait_until_ready",
]
