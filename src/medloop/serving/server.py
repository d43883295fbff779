"""The server as `medloop serve` runs it: the engine (the one factory for every kind), the retriever, the app.
Tests, benches and `medloop demo` build it the same way."""

from __future__ import annotations

from collections.abc import Callable

from medloop.config import Settings


def build_engine(settings: Settings, *, engine: str, base_model: str, adapters: dict[str, str], url: str = "",
                 launch: bool = False, port: int = 0):
    """A LocalEngine; a VLLMEngine on `url` (or on a vLLM it launches on `port`, with `adapters`); a
    LlamaCppEngine on a llama-server at `url` (or on the ones it launches and swaps, with `adapters`)."""
    s = settings.serving
    if engine == "vllm":
        from medloop.serving.vllm_engine import VLLMEngine, launch_vllm

        process = None
        if launch:  # vLLM loads the configured adapters itself; the engine adopts them at start
            process = launch_vllm(base_model, port=port, adapters=adapters, settings=settings)
            url = f"http://127.0.0.1:{port}"
        upstream_key = settings.vllm.api_key.get_secret_value() if settings.vllm.api_key else None
        try:
            return VLLMEngine(url or settings.vllm.url, timeout=s.upstream_timeout_s,
                              served_name=s.served_model_name, api_key=upstream_key, process=process,
                              startup_wait_s=settings.vllm.startup_s if process else None)
        except BaseException:
            if process is not None:  # never leave a launched vLLM behind a gateway that could not be built
                process.terminate()
            raise
    if engine == "llamacpp":
        from medloop.serving.engine import default_served_name
        from medloop.serving.llamacpp_engine import Launcher, LlamaCppEngine

        served = s.served_model_name or default_served_name(base_model)
        if launch:  # the servers start in the engine's start(), with the adapters as GGUF
            return LlamaCppEngine(launcher=Launcher(base_model, served, settings), timeout=s.upstream_timeout_s)
        return LlamaCppEngine(url=url or settings.llamacpp.url, served_name=s.served_model_name,
                              timeout=s.upstream_timeout_s)
    if engine != "local":
        raise ValueError(f"unknown engine '{engine}': choose local, vllm or llamacpp")
    from medloop.serving.local_engine import LocalEngine

    return LocalEngine(base_model, served_name=s.served_model_name, max_batch_size=s.max_batch_size,
                       max_lora_rank=s.max_lora_rank)


def build_server(settings: Settings, *, engine: str = "local", base_model: str = "",
                 adapters: dict[str, str] | None = None, rag: bool = True, url: str = "",
                 launch: bool = False, port: int = 0, versions: dict[str, str] | None = None,
                 registry_status: Callable[[], tuple[str | None, bool]] | None = None):
    """Engine + retriever + app. `adapters`: served name -> folder (the registry's live one included by the
    caller, its registry version in `versions`); `registry_status`: () -> (live version, whether the server
    confirmed loading it), for /metrics."""
    from medloop.retrieval import Retriever
    from medloop.serving.app import build_app

    retriever = Retriever(settings) if rag else None
    if retriever is not None:
        retriever.embedder  # load now, not on the first question  # noqa: B018
    adapters = dict(adapters or {})
    eng = build_engine(settings, engine=engine, base_model=base_model or settings.serving.base_model, adapters=adapters,
                       url=url, launch=launch, port=port)
    application = build_app(settings, eng, retriever, adapters=adapters, versions=versions)
    application.state.registry_status = registry_status
    return application


def serve(application, listener, drain_s: float) -> None:
    """Run the app on a bound socket until SIGTERM or SIGINT. Then no new connection is taken, requests in flight
    get `drain_s` seconds to finish, and after that the engine stops: whatever still runs ends with an error (a
    stream: an error chunk, then [DONE]) instead of being cut off, and the process exits."""
    import asyncio

    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            engine = application.state.engine
            timer = asyncio.get_running_loop().call_later(drain_s, lambda: asyncio.ensure_future(engine.close()))
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    config = uvicorn.Config(application, log_level="warning", timeout_graceful_shutdown=drain_s + 10)
    DrainingServer(config).run(sockets=[listener])
