"""Audio processing server: upload a file, get each processed chunk streamed back over Socket.IO."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, Socket.IO, the task engine, error handlers and endpoints."""
    # Imported here: audio-server --help (audioserver.config) answers without loading
    # Flask, numpy, scipy and numba.
    from flask import Flask
    from flask_socketio import SocketIO

    from . import config, errors, events, jsonio, page, routes, security
    from .audio.ffmpeg import configure_pydub, find_ffmpeg
    from .closing import CloseWhenDropped
    from .events import SocketPublisher, register_handlers
    from .metrics import Metrics
    from .tasks import TaskEngine

    # The page's folders are at the top level of a checkout, or in the installed package.
    root = page.page_root()
    app = Flask(__name__, template_folder=root / "templates", static_folder=root / "static")
    app.config.from_mapping(config.defaults())
    app.config.update(config.from_environment())
    if test_config:
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_UPLOAD_MB"] * 1024 * 1024)
    app.json = jsonio.JSONProvider(app)
    app.request_class = routes.UploadRequest

    data_dir = Path(app.config["DATA_DIR"]).resolve()
    (data_dir / routes.UPLOADS).mkdir(parents=True, exist_ok=True)
    app.config["DATA_DIR"] = str(data_dir)
    ffmpeg = find_ffmpeg(app.config["FFMPEG"])
    configure_pydub(ffmpeg)

    metrics = Metrics()
    app.extensions["metrics"] = metrics
    origins = security.init_app(app)
    # Flask-SocketIO passes these on to python-socketio and python-engineio, which take a
    # callable for the origins and a packet class as the serializer; its stubs say neither.
    socketio = SocketIO(  # type: ignore[call-arg]
        app,
        async_mode="threading",
        cors_allowed_origins=origins.socketio_origins(),  # type: ignore[arg-type]
        serializer=events.Packet,
    )
    security.guard_hosts(
        app, security.HostPolicy(app.config["ALLOWED_HOSTS"], bound=app.config["HOST"])
    )
    publisher = SocketPublisher(socketio)
    app.extensions["audio_publisher"] = publisher
    engine_class: type[TaskEngine] = TaskEngine
    cluster: dict[str, Any] = {}
    if app.config["REDIS_URL"]:  # a web instance of a cluster (cluster.py)
        from .cluster import ClusterEngine

        engine_class, cluster = ClusterEngine, {"redis_url": app.config["REDIS_URL"]}
    engine = engine_class.from_config(
        app.config,
        data_dir=data_dir,
        ffmpeg=ffmpeg,
        publisher=publisher,
        observer=metrics,
        **cluster,
    )
    metrics.watch_engine(engine.health)
    app.extensions["audio_engine"] = engine

    errors.init_app(app)
    register_handlers(socketio, engine)
    app.register_blueprint(routes.bp)
    page.init_app(app, page.VendorFiles(root=root, cache=page.cache_dir(), npm=app.config["NPM"]))
    # Files close when a client goes away (wrapping wsgi_app is Flask's way to add middleware).
    app.wsgi_app = CloseWhenDropped(app.wsgi_app)  # type: ignore[method-assign]
    return app
