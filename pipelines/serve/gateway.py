"""The HTTP front door: one FastAPI ingress (`Gateway`) that checks request bodies, forwards
them to each model's ModelServer and turns what comes back into HTTP.

    GET  /                              the gallery: pick a model, set its parameters, see samples
    GET  /healthz                       200 when every model is loaded
    GET  /v1/models                     name, family, capabilities, parameters, defaults, version
    GET  /v1/models/{name}
    POST /v1/models/{name}/sample       n, seed, class_label or prompt, the model's settings, format
                                        (audio models answer audio/wav)
    POST /v1/models/{name}/encode       images -> latents          (capability "encode")
    POST /v1/models/{name}/decode       latents -> images          (capability "decode")
    POST /v1/models/{name}/interpolate  two images -> a path       (encode and decode)
    POST /v1/models/{name}/edit         images, a direction, an amount -> edited images   (encode and decode,
                                        with directions from `genray directions`)
    POST /v1/models/{name}/tokenize     images -> h x w code ids   (capability "tokenize"), with
                                        grid [h, w] and codebook_size K (ids in [0, K))
    POST /v1/models/{name}/decode_tokens  h x w code ids -> images (capability "tokenize")
    POST /v1/models/{name}/translate    images -> their translations   (capability "translate")
    POST /v1/models/{name}/variations   images -> new images from their CLIP embeddings   (capability "variations": unCLIP)
    POST /v1/models/{name}/style_mix    two seeds, a crossover -> mixed images   (StyleGAN2)
    POST /v1/models/{name}/log_prob     images -> nats, bits/dim   (capability "log_prob")
    POST /v1/models/{name}/embed        captions or images -> unit-norm embeddings   (capability "embed": CLIP)
    POST /v1/models/{name}/classify     images, labels, templates -> each image's scores over the labels and
                                        its top label, zero-shot   (capability "embed")
    POST /v1/models/{name}/generate     text models: prompt -> text, JSON or streamed as
                                        server-sent events           (capability "generate_text")
    GET  /docs, /openapi.json

With an API key (`genray serve --api-key-file FILE`, serve/auth.py), every route but /healthz
and the gallery page answers 401 (WWW-Authenticate: Bearer) unless the request carries
`Authorization: Bearer <key>`: a middleware on the whole app, so a new route needs the key too.

Statuses: 404 for a model or route that is not there; 422 naming the field for a body that does
not fit the model or a limit; 413 for a body over limits.max_body_bytes; 503 past
limits.request_timeout_s. Anything else that goes wrong is a bug: a 500 with a short JSON body,
its traceback in the gateway's log (logger "ray.serve", so it lands in the replica's Serve log).

The FastAPI app is built per replica, after the constructor (`__serve_build_asgi_app__`, see
`serve.ingress`), so its routes and body limit read this deployment's own handles and limits.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve

from genray.pipelines.serve.auth import BearerAuth, KeyCheck
from genray.pipelines.serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    DecodeRequest,
    DecodeTokensRequest,
    EditRequest,
    EmbedRequest,
    EmbedResponse,
    EncodeResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ImagesOut,
    ImagesRequest,
    InterpolateRequest,
    InterpolateResponse,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
    StyleMixRequest,
    TokenizeResponse,
    TranslateRequest,
    VariationsRequest,
)
from genray.pipelines.serve.spec import Limits

WEB_PAGE = Path(__file__).parent.parent / "web" / "index.html"
VERSION_HEADER = "X-Genray-Model-Version"

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    """Routes requests to the models' deployments. `models`: name -> DeploymentHandle of that
    model's ModelServer; `limits`: the serve spec's Limits; `key_check`: the API key's salted
    hash (auth.key_check), None for an open API."""

    def __init__(self, models: dict[str, Any], limits: dict[str, Any], key_check: KeyCheck | None = None):
        self.models = models
        self.limits = Limits.model_validate(limits)
        self.key_check = key_check

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_fastapi(self)

    async def call(self, name: str, method: str, body: dict[str, Any], **kwargs: Any):
        """The model's answer as a dict, or the HTTP error response that replaces it."""
        handle = self.models.get(name)
        if handle is None:
            return not_found(name, sorted(self.models))
        try:
            result = await asyncio.wait_for(getattr(handle, method).remote(body, **kwargs),
                                            self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            return error_response(503, "timeout", f"{name} took over {self.limits.request_timeout_s:g} s "
                                                  "(limits.request_timeout_s); ask for fewer samples or steps, or retry")
        if "error" in result:
            err = result["error"]
            return JSONResponse(status_code=err["status"], content={"detail": err["detail"]})
        return result

    async def generate(self, name: str, body: dict[str, Any]):
        """Text generation: the model's stream of pieces, collected into one JSON answer, or
        passed on as server-sent events as they come (body["stream"])."""
        handle = self.models.get(name)
        if handle is None:
            return not_found(name, sorted(self.models))
        stream = handle.options(stream=True).generate.remote(body)
        timeout = self.limits.request_timeout_s
        late = error_response(503, "timeout", f"{name} took over {timeout:g} s (limits.request_timeout_s); ask for "
                                              "fewer tokens or samples, or retry")
        try:
            first = await asyncio.wait_for(stream.__anext__(), timeout)
        except asyncio.TimeoutError:
            stream.cancel()
            return late
        if "error" in first:
            return JSONResponse(status_code=first["error"]["status"], content={"detail": first["error"]["detail"]})
        start = first["start"]
        headers = {VERSION_HEADER: start["version"]}
        if body["stream"]:
            return StreamingResponse(sse_events(start, stream), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})

        async def collect() -> list[str]:
            texts = ["" for _ in start["prompts"]]
            async for item in stream:
                texts = [t + p for t, p in zip(texts, item["pieces"])]
            return texts

        try:
            texts = await asyncio.wait_for(collect(), timeout)
        except asyncio.TimeoutError:
            stream.cancel()
            return late
        return JSONResponse(content=GenerateResponse(**start, texts=texts).model_dump(), headers=headers)

    async def versioned(self, name: str, method: str, body: dict[str, Any]):
        result = await self.call(name, method, body)
        if not isinstance(result, dict):
            return result
        return JSONResponse(content=result, headers={VERSION_HEADER: result["version"]})


# ------------------------------------------------------------------------------------------ routes

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def build_fastapi(gateway: Gateway) -> FastAPI:
    app = FastAPI(
        title="genray",
        version="1",
        description="Generative models trained with genray, served by Ray Serve. "
                    "GET /v1/models lists each model's routes and parameters."
                    + (" Every route but /healthz needs the header Authorization: Bearer <key>."
                       if gateway.key_check is not None else ""),
    )

    @app.get("/healthz")
    async def healthz():
        versions = {}
        for name, handle in gateway.models.items():
            try:
                versions[name] = (await asyncio.wait_for(handle.stats.remote(), 10))["version"]
            except Exception as e:  # noqa: BLE001 (health is a report, not a request)
                return JSONResponse(status_code=503, content={"status": "unhealthy", "model": name, "error": str(e)})
        return {"status": "ok", "models": versions}

    @app.get("/v1/models")
    async def list_models():
        infos = await asyncio.gather(*(h.describe.remote() for h in gateway.models.values()))
        return {"models": list(infos)}

    @app.get("/v1/models/{name}", responses={404: {"model": ErrorResponse}})
    async def get_model(name: str):
        if name not in gateway.models:
            return not_found(name, sorted(gateway.models))
        return await gateway.models[name].describe.remote()

    @app.get("/v1/models/{name}/stats", include_in_schema=False)
    async def model_stats(name: str):
        if name not in gateway.models:
            return not_found(name, sorted(gateway.models))
        return await gateway.models[name].stats.remote()

    @app.post("/v1/models/{name}/sample", responses={
        200: {"model": SampleResponse, "content": {"image/png": {}, "audio/wav": {}},
              "description": "JSON; a PNG grid with Accept: image/png (image models); audio/wav, the clips "
                             "one after another, from an audio model (format wav, its default)"}, **ERRORS})
    async def sample(name: str, body: SampleRequest, request: Request):
        wants_png = "image/png" in request.headers.get("accept", "")
        result = await gateway.call(name, "sample", body.model_dump(), grid=wants_png)
        if not isinstance(result, dict):
            return result
        headers = {VERSION_HEADER: result["version"]}
        if "wav" in result:
            return Response(content=result["wav"], media_type="audio/wav", headers=headers)
        if "grid" in result:
            return Response(content=result["grid"], media_type="image/png", headers=headers)
        return JSONResponse(content=result, headers=headers)

    @app.post("/v1/models/{name}/generate", responses={
        200: {"model": GenerateResponse, "content": {"text/event-stream": {}},
              "description": "JSON, or with stream: true server-sent events: start, token (one per "
                             "generated piece: {index, text}), done ({texts})"}, **ERRORS})
    async def generate(name: str, body: GenerateRequest):
        return await gateway.generate(name, body.model_dump())

    @app.post("/v1/models/{name}/encode", responses={200: {"model": EncodeResponse}, **ERRORS})
    async def encode(name: str, body: ImagesRequest):
        return await gateway.versioned(name, "encode", body.model_dump())

    @app.post("/v1/models/{name}/decode", responses={200: {"model": ImagesOut}, **ERRORS})
    async def decode(name: str, body: DecodeRequest):
        return await gateway.versioned(name, "decode", body.model_dump())

    @app.post("/v1/models/{name}/tokenize", responses={200: {"model": TokenizeResponse}, **ERRORS})
    async def tokenize(name: str, body: ImagesRequest):
        return await gateway.versioned(name, "tokenize", body.model_dump())

    @app.post("/v1/models/{name}/decode_tokens", responses={200: {"model": ImagesOut}, **ERRORS})
    async def decode_tokens(name: str, body: DecodeTokensRequest):
        return await gateway.versioned(name, "decode_tokens", body.model_dump())

    @app.post("/v1/models/{name}/interpolate", responses={200: {"model": InterpolateResponse}, **ERRORS})
    async def interpolate(name: str, body: InterpolateRequest):
        return await gateway.versioned(name, "interpolate", body.model_dump())

    @app.post("/v1/models/{name}/edit", responses={200: {"model": ImagesOut}, **ERRORS})
    async def edit(name: str, body: EditRequest):
        return await gateway.versioned(name, "edit", body.model_dump())

    @app.post("/v1/models/{name}/log_prob", responses={200: {"model": LogProbResponse}, **ERRORS})
    async def log_prob(name: str, body: ImagesRequest):
        return await gateway.versioned(name, "log_prob", body.model_dump())

    @app.post("/v1/models/{name}/translate", responses={200: {"model": ImagesOut}, **ERRORS})
    async def translate(name: str, body: TranslateRequest):
        return await gateway.versioned(name, "translate", body.model_dump())

    @app.post("/v1/models/{name}/variations", responses={200: {"model": ImagesOut}, **ERRORS})
    async def variations(name: str, body: VariationsRequest):
        return await gateway.versioned(name, "variations", body.model_dump())

    @app.post("/v1/models/{name}/style_mix", responses={200: {"model": ImagesOut}, **ERRORS})
    async def style_mix(name: str, body: StyleMixRequest):
        return await gateway.versioned(name, "style_mix", body.model_dump())

    @app.post("/v1/models/{name}/embed", responses={200: {"model": EmbedResponse}, **ERRORS})
    async def embed(name: str, body: EmbedRequest):
        return await gateway.versioned(name, "embed", body.model_dump())

    @app.post("/v1/models/{name}/classify", responses={200: {"model": ClassifyResponse}, **ERRORS})
    async def classify(name: str, body: ClassifyRequest):
        return await gateway.versioned(name, "classify", body.model_dump())

    @app.get("/", include_in_schema=False)
    async def gallery():
        return HTMLResponse(WEB_PAGE.read_text())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # FastAPI's own 422 echoes the input, which may hold NaN or Infinity (Python's JSON parser
        # accepts them) that its JSON response cannot encode: a 500. Location, message and type
        # are what a client needs.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    # The last added is the outermost. The key is checked before the body limit, so a request
    # without it is a 401 whatever its body; a bug anywhere below is a logged 500.
    app.add_middleware(BodyLimit, limit=gateway.limits.max_body_bytes)
    if gateway.key_check is not None:
        app.add_middleware(BearerAuth, check=gateway.key_check)
    app.add_middleware(InternalErrors)
    return app


async def sse_events(start: dict[str, Any], stream) -> AsyncIterator[bytes]:
    """Server-sent events of one generation: `start` (model, version, settings, prompts), a
    `token` event per non-empty piece ({"index": sample, "text": piece}), then `done` ({"texts":
    each sample's whole text}). A failure after the first byte cannot change the status any more:
    it ends the stream with an `error` event, and the traceback goes to the log."""
    def event(kind: str, data: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    yield event("start", start)
    texts = ["" for _ in start["prompts"]]
    try:
        async for item in stream:
            for i, piece in enumerate(item["pieces"]):
                if piece:
                    texts[i] += piece
                    yield event("token", {"index": i, "text": piece})
    except Exception:  # noqa: BLE001 (a bug mid-stream: logged, and the client told)
        logger.exception("generate stream of %s failed", start["model"])
        yield event("error", {"detail": [{"loc": [], "msg": "internal error while generating", "type": "internal"}]})
        return
    yield event("done", {"texts": texts})


def not_found(name: str, served: list[str]) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": [{
        "loc": ["path", "name"], "type": "not_found",
        "msg": f"no model {name!r} is served; served: {', '.join(served) or 'none'}"}]})


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"loc": ["body"], "type": kind, "msg": message}]})


# -------------------------------------------------------------------------------------- middleware


class InternalErrors:
    """Any exception a route lets through is a bug: log it with its traceback (a model
    replica's traceback travels inside the RayTaskError) and answer a short 500."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, receive, tracking_send)
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:  # the status line is out: nothing left to answer with
                raise
            await JSONResponse(status_code=500, content={"detail": [{
                "loc": [], "type": "internal_error",
                "msg": "internal server error; the server's log has the traceback"}]})(scope, receive, send)


class BodyLimit:
    """413 for a body over `limit` bytes (limits.max_body_bytes), declared or streamed."""

    def __init__(self, inner, limit: int):
        self.inner = inner
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        limit = self.limit
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = error_response(413, "too_large", f"request body is over {limit} bytes (limits.max_body_bytes)")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_big(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await too_big(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
